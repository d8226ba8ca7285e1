// dist/cjs holds the CommonJS build: its own package.json tells Node (and TypeScript) so, since
// the package itself is "type": "module".
import { writeFile } from "node:fs/promises";

await writeFile(new URL("../dist/cjs/package.json", import.meta.url), '{ "type": "commonjs" }\n');
