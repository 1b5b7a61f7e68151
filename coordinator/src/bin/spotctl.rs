use std::process::ExitCode;

fn main() -> ExitCode {
    spot_coordinator::ctl::main()
}
