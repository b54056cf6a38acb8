//! The module layers of the `pushgate` crate, checked from its source: no module imports one
//! above it, and the fronts do not import each other (only `fronts/http`, the listener every
//! HTTP front is served by, may import another front, to mount its routes). The order (top to
//! bottom):
//!
//! `main`, `cli`, `fuzzing` → `fronts` (`xmpp`, `http`) → `core` → `error` → `storage` →
//! `config` → `ids`, `metrics`, `rlimit`.
//!
//! Every `crate::` path in a file (and `pushgate::` path in `main.rs`), in code or doc, counts as
//! an import; a layer may use any layer below it. Modules reach their own children through
//! `super::`/`self::`, which cannot leave their top-level module without `crate::`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Rank of each top-level module: a module may import only modules of lower rank.
fn rank(module: &str) -> Option<u8> {
    Some(match module {
        "main" | "lib" => 9,
        "cli" | "fuzzing" => 8,
        "fronts" => 7,
        "core" => 6,
        "error" => 5,
        "storage" => 4,
        "config" => 3,
        "ids" | "metrics" | "rlimit" => 1,
        _ => return None,
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module (and, under `fronts`, the front) a source file belongs to.
fn owner(src: &Path, file: &Path) -> (String, Option<String>) {
    let rel: Vec<String> = file
        .strip_prefix(src)
        .unwrap()
        .iter()
        .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    let front = (rel[0] == "fronts" && rel.len() > 2).then(|| rel[1].clone());
    (rel[0].clone(), front)
}

/// Every `crate::a::b` (or `pushgate::a::b` in the binary) named in `text`: (a, b).
fn imports(text: &str, prefix: &str) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for (i, _) in text.match_indices(prefix) {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &text[i + prefix.len()..];
        let mut parts = rest.split("::").map(|p| {
            p.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
        });
        let first = parts.next().unwrap_or_default();
        let second = parts.next().unwrap_or_default();
        found.insert((first, second));
    }
    found
}

#[test]
fn no_module_imports_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let (module, front) = owner(&src, file);
        let Some(own) = rank(&module) else {
            continue; // src/bin and anything new: not part of the library's layers
        };
        let text = std::fs::read_to_string(file).unwrap();
        let prefix = if module == "main" {
            "pushgate::"
        } else {
            "crate::"
        };
        for (target, sub) in imports(&text, prefix) {
            let Some(theirs) = rank(&target) else {
                continue;
            };
            let upward = theirs > own;
            // The HTTP listener mounts the routers of the HTTP fronts; no other front may reach
            // into another.
            let sideways_front = target == "fronts"
                && module == "fronts"
                && front.as_deref().is_some_and(|f| f != sub && f != "http");
            if upward || sideways_front {
                wrong.push(format!(
                    "{} imports {prefix}{target}::{sub}",
                    file.strip_prefix(&src).unwrap().display()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

/// The core and the store know no protocol: no stanza, XML or HTTP type reaches them (JIDs reach
/// them only as `ids::BareJid`, the account a registration belongs to).
#[test]
fn the_core_knows_no_protocol() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for dir in ["core", "storage"] {
        rust_files(&src.join(dir), &mut files);
    }
    let protocol = [
        "xmpp_parsers",
        "minidom",
        "rxml",
        "xso",
        "axum",
        "hyper",
        "fronts::",
    ];
    let mut wrong = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for name in protocol {
            if text.contains(name) {
                wrong.push(format!("{} uses {name}", file.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "protocol types in the core:\n{}",
        wrong.join("\n")
    );
}
