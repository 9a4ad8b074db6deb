fn main() {
    // Die quietly when a pipe closes (`lumind profile | head`), like other tools.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let code = lumind::cli::main();
    std::process::exit(code);
}
