//! The README's example on your own tables is `examples/own_table.rs`, word
//! for word (`scripts/test` runs the example against the real server).

#[test]
fn the_readme_shows_the_example_that_runs() {
    let readme = include_str!("../README.md");
    let example = include_str!("../examples/own_table.rs");
    assert!(
        readme.contains(example),
        "README.md's example differs from examples/own_table.rs"
    );
}
