fn main() -> std::process::ExitCode {
    usage_gate::cli::run()
}
