//! The READMEs agree with each other: the core's published README carries the same driver
//! example as the repository's, so the example every newcomer reads is the one both
//! doctests run (`introvisor`'s on its README, this crate's on the root one).

use std::path::Path;

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The ```rust blocks of a Markdown text, in order.
fn rust_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```rust") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), l) => {
                block.push_str(l);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn the_core_readme_carries_the_root_readmes_driver_example() {
    let root = rust_blocks(&read("README.md"));
    let core = rust_blocks(&read("core/README.md"));
    let example = core.first().expect("core/README.md has a rust example");
    assert!(example.contains("impl VmiDriver for"), "{example}");
    assert!(
        root.contains(example),
        "core/README.md's example differs from every rust block of README.md"
    );
}

#[test]
fn every_published_crate_ships_the_license_texts() {
    for name in ["LICENSE-MIT", "LICENSE-APACHE"] {
        let root = read(name);
        assert!(root.len() > 1000, "{name} looks empty");
        for krate in ["core", "backends/ept", "backends/host"] {
            assert_eq!(
                read(&format!("{krate}/{name}")),
                root,
                "{krate}/{name} differs from the root's"
            );
        }
    }
}
