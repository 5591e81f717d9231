//! Command-line interface (filled in by the runner core).
pub fn main() -> i32 {
    eprintln!("recipe: CLI not wired yet");
    1
}
