//! Links the image with `link.ld` (the boot sector at 0x7C00, then the rest of the image)
//! as a non-PIE executable: the boot sector loads it at the addresses it is linked at
//! and nothing applies relocations at run time, so every address is resolved at link
//! time (`--no-pie` overrides the target's default static PIE; the code itself may stay
//! position independent). Given here rather than as rustflags, so that a RUSTFLAGS in the
//! environment (which replaces configured rustflags) cannot undo it.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    println!("cargo:rustc-link-arg-bins=-T{dir}/link.ld");
    println!("cargo:rustc-link-arg-bins=--no-pie");
    println!("cargo:rerun-if-changed=link.ld");
}
