//! Every attribute and block of every schema (the provider block, each resource, each data
//! source) is documented on its page under `docs/`, written as `` `name` ``.

use std::path::Path;

use safebox_provider::framework::schema::Block;

/// `` `name` `` of every attribute and nested block in `block`, depth first, with its path.
fn names(block: &Block, path: &str, out: &mut Vec<(String, &'static str)>) {
    for attribute in &block.attributes {
        out.push((format!("{path}{}", attribute.name), attribute.name));
    }
    for nested in &block.blocks {
        out.push((format!("{path}{}", nested.name), nested.name));
        names(&nested.block, &format!("{path}{}.", nested.name), out);
    }
}

/// The names of `block` that `page` (relative to `docs/`) does not mention.
fn undocumented(page: &str, block: &Block) -> Vec<String> {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs").join(page);
    let text = std::fs::read_to_string(&docs).unwrap_or_else(|e| panic!("{}: {e}", docs.display()));
    let mut all = Vec::new();
    names(block, "", &mut all);
    all.into_iter()
        .filter(|(_, name)| !text.contains(&format!("`{name}`")))
        .map(|(path, _)| format!("{page}: {path}"))
        .collect()
}

#[test]
fn every_schema_attribute_is_documented() {
    let mut missing = undocumented("index.md", &safebox_provider::config::schema().block);
    for resource in safebox_provider::resources::all() {
        let page = format!("resources/{}.md", resource.type_name().trim_start_matches("safebox_"));
        missing.extend(undocumented(&page, &resource.schema().block));
    }
    for data_source in safebox_provider::data_sources::all() {
        let page = format!("data-sources/{}.md", data_source.type_name().trim_start_matches("safebox_"));
        missing.extend(undocumented(&page, &data_source.schema().block));
    }
    assert!(missing.is_empty(), "undocumented: {missing:#?}");
}
