/// mimalloc, not glibc's malloc: under the hold → commit load glibc's malloc and free took 13% of
/// the process's samples (`perf record`, bench/README "Issue 34 runs"); see there for what it
/// changed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    usage_gate::cli::run()
}
