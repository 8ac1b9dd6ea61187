//! Paths shared by the integration tests.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Mutex;

use infoctor_nlp::model_files::{MINILM_DIR_NAME, fetch_minilm};

/// Folder of the shared test data: `INFOCTOR_TEST_DATA`, else
/// `../shared/data` relative to the workspace root. Panics when it does not exist, so a missing
/// data set fails the tests instead of skipping them.
pub fn test_data_dir() -> PathBuf {
    let dir = std::env::var_os("INFOCTOR_TEST_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data"))
        });
    assert!(
        dir.is_dir(),
        "test data folder {} does not exist: set INFOCTOR_TEST_DATA to the folder holding icd10cm-2026/",
        dir.display()
    );
    dir
}

/// Returns a data file below [`test_data_dir`], panicking when it is missing.
pub fn test_data_file(relative: &str) -> PathBuf {
    let path = test_data_dir().join(relative);
    assert!(
        path.exists(),
        "test data file {} does not exist",
        path.display()
    );
    path
}

/// Root of the test model cache: `INFOCTOR_MODEL_CACHE`, else
/// `nlp/.model-cache`.
pub fn model_cache_root() -> PathBuf {
    std::env::var_os("INFOCTOR_MODEL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.model-cache")))
}

/// Model folder for tests: `all-MiniLM-L6-v2` below [`model_cache_root`].
/// The first test run downloads the model there; later runs only verify it.
pub fn model_dir() -> PathBuf {
    static FETCH: Mutex<()> = Mutex::new(());
    let dir = model_cache_root().join(MINILM_DIR_NAME);
    let _guard = FETCH
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Err(error) = fetch_minilm(&dir) {
        panic!("fetching the model into {} failed: {error}", dir.display());
    }
    dir
}
