//! The `image` label: what a container runs, as cAdvisor's `image` names a Docker image.
//! Dashboards built for cAdvisor filter on `image!=""`, so it is never empty:
//!
//! - an Apptainer (or SingularityCE ≥ 3.7) starter: the image of its engine configuration, the
//!   SIF file, sandbox directory or URI ([`engine_config_image`]);
//! - `apptheus exec -- CMD`: the absolute path of CMD;
//! - any other launcher, or when the above cannot be read: the launcher's executable.
//!
//! Everything here reads what a user controls (the environment of their starter, the command
//! line of their `apptheus exec`): reads are capped, and bad input only gives the fallback and
//! one debug line.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::environ::{self, read_environ_capped};

/// Longest `image` value: PATH_MAX. Anything longer is not a path a process could have run,
/// and a label value that long would weigh on every series of the container.
pub const IMAGE_CAP: usize = 4096;

/// Apptainer splits the engine configuration over at most 8 variables of 131056 bytes
/// (`MAX_ENGINE_CONFIG_CHUNK`, `MAX_CHUNK_SIZE` in its buildcfg); the starter's environment holds
/// only that and two or three short variables, so this cap never cuts a real one.
const ENGINE_CONFIG_CAP: usize = 9 * 128 * 1024;
const MAX_CHUNKS: usize = 8;
/// The longest command line of `apptheus exec` that is read for the command.
const CMDLINE_CAP: usize = 64 * 1024;

/// The `image` label of a verified launcher.
pub fn image_of(pid: i32, exe: &Path) -> String {
    let fallback = || {
        let exe = exe.as_os_str().to_string_lossy().into_owned();
        if exe.is_empty() {
            format!("pid-{pid}")
        } else {
            exe
        }
    };
    let found = if is_apptheus_exec(pid, exe) {
        exec_command(pid).map_err(|why| ("the command of apptheus exec", why))
    } else {
        match read_environ_capped(pid, ENGINE_CONFIG_CAP) {
            Ok(env) if is_apptainer(&env) => engine_config_image(&env).map_err(|e| ("the engine configuration", e.to_string())),
            Ok(_) => return fallback(),
            Err(err) => Err(("the launcher's environment", err.to_string())),
        }
    };
    match found {
        Ok(image) if image.len() <= IMAGE_CAP && !image.is_empty() => image,
        Ok(image) => {
            tracing::debug!(pid, len = image.len(), cap = IMAGE_CAP, "image name longer than the cap: the image label is the launcher's executable");
            fallback()
        }
        Err((source, why)) => {
            tracing::debug!(pid, %why, "no image from {source}: the image label is the launcher's executable");
            fallback()
        }
    }
}

/// Why an engine configuration names no image.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum EngineConfigError {
    #[error("ENGINE_CONFIG_CHUNKS is {0:?}, not a count from 1 to 8")]
    BadCount(String),
    #[error("chunk ENGINE_CONFIG{0} is missing (or cut off by the read cap)")]
    MissingChunk(usize),
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("engine {0:?} is not Apptainer's or Singularity's")]
    OtherEngine(String),
    #[error("no image in the configuration")]
    NoImage,
}

fn is_apptainer(environ: &[u8]) -> bool {
    environ.split(|b| *b == 0).any(|e| e.starts_with(b"ENGINE_CONFIG_CHUNKS="))
}

/// The image an Apptainer starter runs, from its environment block (NUL-separated `KEY=VALUE`).
///
/// Apptainer's Go side marshals its engine configuration as JSON and cuts it at byte offsets
/// into `ENGINE_CONFIG1..n`, with `ENGINE_CONFIG_CHUNKS=n` (internal/pkg/util/starter); the
/// chunks are joined as bytes before decoding, since a cut may fall inside a UTF-8 character.
/// The image is `.engineConfig.jsonConfig.image`, the absolute path of the SIF or sandbox
/// (a cached SIF for a URI); `imageArg` (Apptainer only) keeps the URI as the user typed it,
/// which says more than a cache path, so a URI there wins.
pub fn engine_config_image(environ: &[u8]) -> Result<String, EngineConfigError> {
    let var = |name: &str| environ::find_bytes(environ, name);
    let count_text = var("ENGINE_CONFIG_CHUNKS").unwrap_or_default();
    let count: usize = std::str::from_utf8(count_text)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .filter(|n| (1..=MAX_CHUNKS).contains(n))
        .ok_or_else(|| EngineConfigError::BadCount(String::from_utf8_lossy(count_text).chars().take(32).collect()))?;
    let mut json = Vec::new();
    for i in 1..=count {
        json.extend_from_slice(var(&format!("ENGINE_CONFIG{i}")).ok_or(EngineConfigError::MissingChunk(i))?);
    }
    let config: EngineConfig = serde_json::from_slice(&json).map_err(|e| EngineConfigError::Json(e.to_string()))?;
    if config.engine_name != "apptainer" && config.engine_name != "singularity" {
        return Err(EngineConfigError::OtherEngine(config.engine_name.chars().take(64).collect()));
    }
    let json = config.engine_config.and_then(|e| e.json_config).ok_or(EngineConfigError::NoImage)?;
    let typed_uri = json.image_arg.filter(|a| is_uri(a));
    match (typed_uri, json.image) {
        (Some(uri), _) => Ok(uri),
        (None, Some(image)) if !image.is_empty() => Ok(image),
        _ => Err(EngineConfigError::NoImage),
    }
}

/// `scheme://...`, as `docker://alpine` or `library://user/col/img:tag`.
fn is_uri(s: &str) -> bool {
    s.split_once("://").is_some_and(|(scheme, _)| !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)))
}

/// The part of Apptainer's `config.Common` that names the image; the rest (the OCI spec, the
/// whole apptainer.conf) is skipped by the parser.
#[derive(Deserialize)]
struct EngineConfig {
    #[serde(rename = "engineName", default)]
    engine_name: String,
    #[serde(rename = "engineConfig")]
    engine_config: Option<EngineConfigBody>,
}

#[derive(Deserialize)]
struct EngineConfigBody {
    #[serde(rename = "jsonConfig")]
    json_config: Option<JsonConfig>,
}

#[derive(Deserialize)]
struct JsonConfig {
    image: Option<String>,
    #[serde(rename = "imageArg")]
    image_arg: Option<String>,
}

/// Our own launcher: an `apptheus*` executable whose first argument is `exec`.
fn is_apptheus_exec(pid: i32, exe: &Path) -> bool {
    exe.file_name().is_some_and(|n| n.as_bytes().starts_with(b"apptheus"))
        && read_capped(&format!("/proc/{pid}/cmdline"), 256).is_ok_and(|c| c.split(|b| *b == 0).nth(1) == Some(b"exec"))
}

/// The flags of `apptheus exec` that take a value in the next argument (cli.rs checks this
/// list against the parser, so a new flag cannot be missed).
pub const EXEC_VALUE_FLAGS: &[&str] = &["--socket.path", "--timeout"];

/// The absolute path of the command an `apptheus exec` runs, as its `execvp` will find it:
/// with a `/` relative to its working directory, else the first executable file along its PATH.
fn exec_command(pid: i32) -> Result<String, String> {
    let cmdline = read_capped(&format!("/proc/{pid}/cmdline"), CMDLINE_CAP).map_err(|e| e.to_string())?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let command = command_in_exec_args(args.get(2..).unwrap_or_default()).ok_or("no command on its command line")?;
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).map_err(|e| format!("its working directory: {e}"))?;
    let command = Path::new(OsStr::from_bytes(command));
    let found = if command.as_os_str().as_bytes().contains(&b'/') {
        Some(lexical_join(&cwd, command))
    } else {
        let env = read_environ_capped(pid, environ::ENVIRON_CAP).unwrap_or_default();
        // execvp's search path when PATH is unset.
        let path = environ::find_bytes(&env, "PATH").unwrap_or(b"/bin:/usr/bin");
        path.split(|b| *b == b':')
            .map(|dir| lexical_join(&cwd, &Path::new(OsStr::from_bytes(if dir.is_empty() { b"." } else { dir })).join(command)))
            .find(|candidate| is_executable(pid, candidate))
    };
    let found = found.ok_or_else(|| format!("{} is not found along its PATH", command.display()))?;
    Ok(found.to_string_lossy().into_owned())
}

/// The command among the arguments after `exec`: the one after `--`, or the first that is not a
/// flag or a flag's value.
pub fn command_in_exec_args<'a>(args: &[&'a [u8]]) -> Option<&'a [u8]> {
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        if *arg == b"--" {
            return args.get(i + 1).copied();
        }
        if !arg.starts_with(b"-") {
            return Some(arg);
        }
        let takes_value = EXEC_VALUE_FLAGS.iter().any(|f| *arg == f.as_bytes());
        i += if takes_value { 2 } else { 1 };
    }
    None
}

/// `base` joined with `path`, `.` dropped and `..` applied (no symlink is followed: this names the
/// file, it does not open it).
fn lexical_join(base: &Path, path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for part in base.join(path).components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// An executable regular file, seen through the launcher's root (its mount namespace).
fn is_executable(pid: i32, path: &Path) -> bool {
    let seen = Path::new("/proc").join(pid.to_string()).join("root").join(path.strip_prefix("/").unwrap_or(path));
    std::fs::metadata(seen).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn read_capped(path: &str, cap: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut out = Vec::new();
    std::fs::File::open(path)?.take(cap as u64).read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A starter's environment as Apptainer builds it: the message level, the chunks, the count.
    fn starter_env(json: &[u8], chunk: usize) -> Vec<u8> {
        env_of(&json.chunks(chunk).collect::<Vec<_>>())
    }

    fn env_of(chunks: &[&[u8]]) -> Vec<u8> {
        let mut env = b"APPTAINER_MESSAGELEVEL=1\0".to_vec();
        for (i, c) in chunks.iter().enumerate() {
            env.extend_from_slice(format!("ENGINE_CONFIG{}=", i + 1).as_bytes());
            env.extend_from_slice(c);
            env.push(0);
        }
        env.extend_from_slice(format!("ENGINE_CONFIG_CHUNKS={}\0", chunks.len()).as_bytes());
        env
    }

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/apptainer").join(name)).unwrap()
    }

    #[test]
    fn a_sif_run_names_the_sif() {
        let env = starter_env(&fixture("engine-config-sif.json"), 131056);
        assert_eq!(engine_config_image(&env), Ok("/home/alice/images/lolcow_latest.sif".into()));
    }

    #[test]
    fn a_uri_names_the_uri_as_typed_not_the_cache() {
        let env = starter_env(&fixture("engine-config-docker-uri.json"), 131056);
        assert_eq!(engine_config_image(&env), Ok("docker://alpine:3.20".into()));
    }

    #[test]
    fn singularity_ce_has_no_image_arg() {
        let env = starter_env(&fixture("engine-config-singularity-sandbox.json"), 131056);
        assert_eq!(engine_config_image(&env), Ok("/scratch/bob/ubuntu_sandbox".into()));
    }

    #[test]
    fn chunks_are_joined_as_bytes_even_inside_a_character() {
        // A config of several chunks, cut inside the two bytes of "é".
        let json = fixture("engine-config-sif.json");
        let text = String::from_utf8(json).unwrap().replace("lolcow_latest", "lolcow_café");
        let cut = text.find('é').unwrap() + 1;
        let (a, b) = text.as_bytes().split_at(cut);
        assert!(std::str::from_utf8(a).is_err(), "the cut is inside the character");
        let env = env_of(&[a, b]);
        assert_eq!(engine_config_image(&env), Ok("/home/alice/images/lolcow_café.sif".into()));
    }

    #[test]
    fn bad_input_says_why() {
        let json = fixture("engine-config-sif.json");
        let full = starter_env(&json, json.len().div_ceil(MAX_CHUNKS));
        // The last chunk dropped, the count left as it was.
        let without_last: Vec<u8> = {
            let entries: Vec<&[u8]> = full.split(|b| *b == 0).filter(|e| !e.is_empty()).collect();
            let n = entries.len();
            entries.iter().enumerate().filter(|(i, _)| *i != n - 2).flat_map(|(_, e)| e.iter().copied().chain([0])).collect()
        };
        let chunks = MAX_CHUNKS;
        assert_eq!(engine_config_image(&without_last), Err(EngineConfigError::MissingChunk(chunks)));
        assert_eq!(engine_config_image(b"ENGINE_CONFIG_CHUNKS=9\0"), Err(EngineConfigError::BadCount("9".into())));
        assert_eq!(engine_config_image(b"ENGINE_CONFIG_CHUNKS=x\0"), Err(EngineConfigError::BadCount("x".into())));
        assert_eq!(engine_config_image(b"ENGINE_CONFIG_CHUNKS=0\0"), Err(EngineConfigError::BadCount("0".into())));
        assert!(matches!(engine_config_image(&starter_env(b"{\"engineName\":", 1000)), Err(EngineConfigError::Json(_))));
        assert_eq!(
            engine_config_image(&starter_env(br#"{"engineName":"fakeroot","engineConfig":{"args":[]}}"#, 1000)),
            Err(EngineConfigError::OtherEngine("fakeroot".into()))
        );
        assert_eq!(
            engine_config_image(&starter_env(br#"{"engineName":"apptainer","engineConfig":{"jsonConfig":{"image":""}}}"#, 1000)),
            Err(EngineConfigError::NoImage)
        );
        assert_eq!(
            engine_config_image(&starter_env(br#"{"engineName":"apptainer","engineConfig":{"jsonConfig":{"image":7}}}"#, 1000))
                .map_err(|e| matches!(e, EngineConfigError::Json(_))),
            Err(true)
        );
    }

    #[test]
    fn exec_arguments() {
        let cmd = |args: &[&str]| {
            let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
            command_in_exec_args(&a).map(|c| String::from_utf8_lossy(c).into_owned())
        };
        assert_eq!(cmd(&["--", "sleep", "5"]), Some("sleep".into()));
        assert_eq!(cmd(&["--socket.path", "/s", "--timeout=3s", "--", "./run.sh"]), Some("./run.sh".into()));
        assert_eq!(cmd(&["--timeout", "3s", "python3", "-c", "x"]), Some("python3".into()));
        assert_eq!(cmd(&["--", "--weird"]), Some("--weird".into()));
        assert_eq!(cmd(&["--socket.path"]), None);
        assert_eq!(cmd(&[]), None);
    }

    #[test]
    fn paths_are_joined_without_touching_the_filesystem() {
        assert_eq!(lexical_join(Path::new("/home/a/w"), Path::new("../bin/./x")), PathBuf::from("/home/a/bin/x"));
        assert_eq!(lexical_join(Path::new("/home/a"), Path::new("/usr/bin/env")), PathBuf::from("/usr/bin/env"));
        assert_eq!(lexical_join(Path::new("/"), Path::new("../../x")), PathBuf::from("/x"));
    }

    #[test]
    fn uris() {
        assert!(is_uri("docker://alpine") && is_uri("library://u/c/i:1") && is_uri("oci-archive://x.tar"));
        assert!(!is_uri("/a/b.sif") && !is_uri("x.sif") && !is_uri("://x") && !is_uri("a b://x"));
    }
}
