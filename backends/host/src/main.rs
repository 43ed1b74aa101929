//! The `introvisor` command-line tool; see `introvisor --help` and
//! [`introvisor_host::cli`].

use std::io::IsTerminal;

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let stderr = std::io::stderr();
    let code = introvisor_host::cli::run(
        &args,
        introvisor_host::cli::Io {
            stdin: &mut std::io::stdin().lock(),
            stdout: &mut std::io::stdout().lock(),
            stderr_is_terminal: stderr.is_terminal(),
            stderr: &mut stderr.lock(),
        },
    );
    std::process::exit(code);
}
