fn main() {
    let code = lumind::cli::main();
    std::process::exit(code);
}
