//! The `sensebind` binary: everything lives in the library; see `sensebind --help`.

fn main() -> std::process::ExitCode {
    sensebind::cli::main()
}
