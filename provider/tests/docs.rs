//! Every attribute and block of every schema the provider serves is documented: the provider
//! block in `docs/index.md`, each resource in `docs/resources/<name>.md`, each data source in
//! `docs/data-sources/<name>.md`, each named as `` `name` `` on its page; and no schema names
//! an attribute or block twice (Terraform would keep one of them, silently).

use std::path::{Path, PathBuf};

use safebox_provider::framework::schema::Block;
use safebox_provider::{config, data_sources, resources};

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

/// The names in `block`, at any depth, that `page` never mentions in backquotes.
fn undocumented(block: &Block, page: &Path, out: &mut Vec<String>) {
    let text = std::fs::read_to_string(page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
    let mut names = Vec::new();
    collect(block, "", &mut names);
    for (path, name) in names {
        if !text.contains(&format!("`{name}`")) {
            out.push(format!("{}: {path}", page.display()));
        }
    }
}

fn collect(block: &Block, prefix: &str, out: &mut Vec<(String, &'static str)>) {
    for attribute in &block.attributes {
        out.push((format!("{prefix}{}", attribute.name), attribute.name));
    }
    for nested in &block.blocks {
        out.push((format!("{prefix}{}", nested.name), nested.name));
        collect(&nested.block, &format!("{prefix}{}.", nested.name), out);
    }
}

#[test]
fn every_schema_attribute_is_documented() {
    let mut missing = Vec::new();
    undocumented(&config::schema().block, &docs().join("index.md"), &mut missing);
    for resource in resources::all() {
        let name = resource.type_name().trim_start_matches("safebox_");
        let page = docs().join("resources").join(format!("{name}.md"));
        undocumented(&resource.schema().block, &page, &mut missing);
    }
    for source in data_sources::all() {
        let name = source.type_name().trim_start_matches("safebox_");
        let page = docs().join("data-sources").join(format!("{name}.md"));
        undocumented(&source.schema().block, &page, &mut missing);
    }
    assert!(
        missing.is_empty(),
        "schema attributes missing from the docs (write each as `name` on its page):\n{}",
        missing.join("\n")
    );
}

#[test]
fn no_schema_names_an_attribute_twice() {
    let provider = config::schema();
    let resources = resources::all();
    let sources = data_sources::all();
    let mut blocks = vec![("provider", &provider.block)];
    blocks.extend(resources.iter().map(|r| (r.type_name(), &r.schema().block)));
    blocks.extend(sources.iter().map(|d| (d.type_name(), &d.schema().block)));
    let mut twice = Vec::new();
    for (owner, block) in blocks {
        let mut names = Vec::new();
        collect(block, "", &mut names);
        names.sort();
        for pair in names.windows(2) {
            if pair[0].0 == pair[1].0 {
                twice.push(format!("{owner}: {}", pair[0].0));
            }
        }
    }
    assert!(twice.is_empty(), "named twice in one schema:\n{}", twice.join("\n"));
}
