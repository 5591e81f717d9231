fn main() {
    std::process::exit(recipe::cli::main());
}
