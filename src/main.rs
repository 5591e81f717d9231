fn main() {
    // A `UserPanic` (out of device memory outside a step, e.g. in `recipe generate`) is the
    // command's error, printed as one line; any other panic unwinds as before.
    recipe::util::install_panic_hook();
    let code = match std::panic::catch_unwind(recipe::cli::main) {
        Ok(code) => code,
        Err(p) => match p.downcast::<recipe::util::UserPanic>() {
            Ok(u) => {
                eprintln!("error: {}", u.0);
                1
            }
            Err(p) => std::panic::resume_unwind(p),
        },
    };
    std::process::exit(code);
}
