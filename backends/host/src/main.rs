//! The `introvisor` command-line tool (placeholder; the commands land next).

fn main() {}
