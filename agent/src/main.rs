use std::process::ExitCode;

fn main() -> ExitCode {
    spot_agent::cli::main()
}
