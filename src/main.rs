//! The `fjord` binary: everything lives in the library so it can be tested; this only hands over.

fn main() -> std::process::ExitCode {
    fjord::cli::main()
}
