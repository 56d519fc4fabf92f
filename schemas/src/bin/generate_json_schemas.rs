//! Writes the JSON Schema files of every command and event into `schemas/json/`,
//! removing files of types that no longer exist.

use std::fs;
use std::path::Path;

fn main() -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("json");
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    let files = schemas::json_schema::files();
    for (path, content) in &files {
        let path = dir.join(path);
        fs::create_dir_all(path.parent().expect("files live in folders"))?;
        fs::write(&path, content)?;
    }
    println!("wrote {} schema files into {}", files.len(), dir.display());
    Ok(())
}
