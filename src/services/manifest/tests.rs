//! The node's manifest format and discovery rules, on tests/fixtures/node-services and on
//! manifests written for one rule each.

use std::fs;

use serde_json::json;

use super::*;
use crate::services::{Readiness, ServiceSpec};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/node-services")
}

fn label(k: usize) -> String {
    format!("dirs[{k}]")
}

fn expand(dirs: &[PathBuf]) -> SidecarResult<ExpandedServices> {
    expand_manifests(dirs, &label, &BTreeMap::new())
}

fn by_name<'a>(services: &'a [Value], name: &str) -> &'a Value {
    services.iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no service {name}"))
}

/// A fresh folder under the temp dir holding `files` (relative path, contents).
fn folder(name: &str, files: &[(&str, &str)]) -> PathBuf {
    let root = crate::config::file::temp_path(name);
    for (path, text) in files {
        let path = root.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }
    root
}

fn parse(text: &str) -> Result<ServiceManifest, Problem> {
    parse_manifest(text, Path::new("/srv/services/x/service.json"), &BTreeMap::new())
}

#[test]
fn the_fixture_keeps_the_good_manifests_in_folder_order_and_says_why_each_other_was_skipped() {
    let dir = fixture();
    let out = expand(std::slice::from_ref(&dir)).unwrap();
    let ids: Vec<&str> = out.manifests.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "faster-whisper-vad",
            "never-ready",
            "nmt-m2m100",
            "phonetic-correction",
            "punctuation-restore",
            "semantic-repair-zh",
            "tone-lexicon",
            "piper-tts"
        ]
    );
    let names: Vec<&Value> = out.services.iter().map(|s| &s["name"]).collect();
    assert_eq!(names, ids.iter().map(|i| Value::from(*i)).collect::<Vec<_>>().iter().collect::<Vec<_>>());
    let file = |folder: &str| dir.join(folder).join(MANIFEST_FILE).display().to_string();
    let found: Vec<(String, &str)> = out.diagnostics.iter().map(|d| (d.path.clone(), d.json_path.as_str())).collect();
    assert_eq!(
        found,
        [
            (file("asr-whisper-old"), "id"),
            (file("broken-json"), "exec.args"),
            (file("latin1"), ""),
            (file("no-args"), "exec.args"),
        ]
    );
    let message = |k: usize| out.diagnostics[k].message.as_str();
    assert_eq!(
        message(0),
        format!(
            "duplicate id \"faster-whisper-vad\": {} has it and is kept; this file is skipped",
            file("asr-whisper")
        )
    );
    assert!(message(1).starts_with("not valid JSON: "), "{}", message(1));
    assert_eq!(message(2), "not valid UTF-8 (at byte 34)");
    assert_eq!(message(3), "missing required field (an array)");
    // Every spec is one the supervisor takes.
    let config = ServicesConfig::from_json(&json!({ "services": out.services }), &mut Vec::new()).unwrap();
    assert_eq!(config.services.len(), 8);
}

#[test]
fn a_manifest_becomes_a_spec_with_the_node_runners_conventions() {
    let dir = fixture();
    let out = expand(std::slice::from_ref(&dir)).unwrap();
    let asr = by_name(&out.services, "faster-whisper-vad");
    let folder = dir.join("asr-whisper");
    assert_eq!(asr["command"], folder.join(".venv/bin/python").display().to_string());
    assert_eq!(asr["cwd"], folder.display().to_string());
    assert_eq!(asr["args"][0], "../_fake/fake_service.py");
    assert_eq!(asr["env"], json!({ "ASR_MODEL": "large-v3", "ASR_BEAM": "5", "PYTHONIOENCODING": "utf-8" }));
    assert_eq!(asr["port"], 18701);
    assert_eq!(asr["gpu"], json!({ "key": "auto", "taskTypes": ["ASR"] }));
    assert_eq!(asr["readinessTimeoutMs"], 180_000);
    assert_eq!(asr["readiness"], manifest_readiness(Some(18701)));

    // `venv/` when there is no `.venv/`; a relative cwd from the manifest's folder.
    let nmt = by_name(&out.services, "nmt-m2m100");
    assert_eq!(nmt["command"], dir.join("nmt-m2m/venv/bin/python").display().to_string());
    assert_eq!(nmt["cwd"], dir.join("nmt-m2m").join("../_fake").display().to_string());
    assert_eq!(nmt["gpu"]["taskTypes"], json!(["NMT"]));

    // No virtualenv: python from PATH. CPU and `auto` devices get no GPU.
    let punctuation = by_name(&out.services, "punctuation-restore");
    assert_eq!(punctuation["command"], "python");
    assert!(punctuation.get("gpu").is_none());
    let tone = by_name(&out.services, "tone-lexicon");
    assert_eq!(tone["command"], "python3", "python3 is not a `python` command");
    assert!(tone.get("gpu").is_none());
    // The manifest's own PYTHONIOENCODING wins; numbers and booleans become strings.
    assert_eq!(
        tone["env"],
        json!({ "PYTHONIOENCODING": "utf-8:strict", "LEXICON_SIZE": "5000", "LEXICON_STRICT": "true" })
    );
    // Without a port: the ready line only.
    let phonetic = by_name(&out.services, "phonetic-correction");
    assert_eq!(phonetic["readiness"], json!({ "logLine": { "pattern": READY_LINE_PATTERN } }));
    assert!(phonetic.get("port").is_none());

    let tone_manifest = out.manifests.iter().find(|m| m.id == "tone-lexicon").unwrap();
    assert_eq!((tone_manifest.kind.as_str(), tone_manifest.task_type.as_str()), ("tone", "OTHER"));
    assert_eq!(tone_manifest.device, Some(ManifestDevice::Auto));
    let asr_manifest = &out.manifests[0];
    assert_eq!(asr_manifest.name, "Faster Whisper + Silero VAD");
    assert_eq!(asr_manifest.version.as_deref(), Some("1.2.0"));
    assert_eq!(asr_manifest.tags, ["asr", "zh", "en"]);
}

#[test]
fn the_default_readiness_is_the_line_or_a_health_status_that_is_not_a_not_ready_value() {
    let spec: ServiceSpec = serde_json::from_value(json!({
        "name": "x", "command": "x", "port": 9000, "readiness": manifest_readiness(Some(9000))
    }))
    .unwrap();
    let Readiness::AnyOf(all) = &spec.readiness else { panic!("{:?}", spec.readiness) };
    assert!(matches!(&all[0], Readiness::LogLine(l) if l.pattern.0.is_match("INFO [SERVICE_READY] asr")));
    let Readiness::Http(http) = &all[1] else { panic!("{:?}", all[1]) };
    assert_eq!(http.url.to_string(), "http://127.0.0.1:9000/health");
    assert!(http.expect_status.matches(200) && http.expect_status.matches(204) && !http.expect_status.matches(503));
    assert!(http.json_field_optional);
    for ready in ["ok", "healthy", "degraded", "OK"] {
        assert!(http.field_is_ready(&json!(ready)), "{ready}");
    }
    for not_ready in ["not_ready", "loading", "starting", "initializing", "Loading", "NOT_READY"] {
        assert!(!http.field_is_ready(&json!(not_ready)), "{not_ready}");
    }
}

#[test]
fn a_python_command_runs_the_folders_dot_venv_then_venv_interpreter() {
    let interpreter = if cfg!(windows) { "Scripts/python.exe" } else { "bin/python" };
    let both = folder("venvs", &[(&format!(".venv/{interpreter}"), ""), (&format!("venv/{interpreter}"), "")]);
    assert_eq!(venv_python("python", &both), Some(both.join(".venv").join(interpreter)));
    for command in ["/usr/bin/python", "C:\\Python311\\python.exe", "PYTHON"] {
        assert_eq!(venv_python(command, &both), Some(both.join(".venv").join(interpreter)), "{command}");
    }
    assert_eq!(venv_python("python3", &both), None);
    assert_eq!(venv_python("node", &both), None);
    fs::remove_dir_all(both.join(".venv")).unwrap();
    assert_eq!(venv_python("python", &both), Some(both.join("venv").join(interpreter)));
    fs::remove_dir_all(both.join("venv")).unwrap();
    assert_eq!(venv_python("python", &both), None, "no virtualenv: PATH's python");
    // A folder named like the interpreter is not one.
    fs::create_dir_all(both.join(".venv").join(interpreter)).unwrap();
    assert_eq!(venv_python("python", &both), None);
    fs::remove_dir_all(both).unwrap();
}

#[test]
fn each_required_field_and_each_bad_value_names_its_json_path() {
    let cases = [
        (r#"{"name":"n","type":"asr","exec":{"command":"c","args":[]}}"#, "id", "missing required field"),
        (r#"{"id":"i","type":"asr","exec":{"command":"c","args":[]}}"#, "name", "missing required field"),
        (r#"{"id":"i","name":"n","exec":{"command":"c","args":[]}}"#, "type", "missing required field"),
        (r#"{"id":"i","name":"n","type":"asr"}"#, "exec", "missing required field"),
        (r#"{"id":"i","name":"n","type":"asr","exec":{"args":[]}}"#, "exec.command", "missing required field"),
        (
            r#"{"id":"","name":"n","type":"asr","exec":{"command":"c","args":[]}}"#,
            "id",
            "expected a non-empty string, got \"\"",
        ),
        (
            r#"{"id":"i","name":"n","type":"asr","exec":{"command":"c","args":"a b"}}"#,
            "exec.args",
            "expected an array, got \"a b\"",
        ),
        (
            r#"{"id":"i","name":"n","type":"asr","exec":{"command":"c","args":["a",7]}}"#,
            "exec.args[1]",
            "expected a string, got 7",
        ),
        (
            r#"{"id":"i","name":"n","type":"asr","exec":{"command":"c","args":[],"cwd":1}}"#,
            "exec.cwd",
            "expected a string, got 1",
        ),
        (
            r#"{"id":"i","name":"n","type":"asr","port":70000,"exec":{"command":"c","args":[]}}"#,
            "port",
            "expected an integer 1-65535, got 70000",
        ),
        (
            r#"{"id":"i","name":"n","type":"asr","device":"tpu","exec":{"command":"c","args":[]}}"#,
            "device",
            "expected \"gpu\", \"cpu\" or \"auto\", got \"tpu\"",
        ),
        (
            r#"{"id":"i","name":"n","type":"asr","env":{"A":{"b":1}},"exec":{"command":"c","args":[]}}"#,
            "env.A",
            "expected a string, got {\"b\":1}",
        ),
        (
            r#"{"id":"i","name":"n","type":"asr","tags":["a",null],"exec":{"command":"c","args":[]}}"#,
            "tags[1]",
            "expected a string, got null",
        ),
        (r#"[1]"#, "", "expected a JSON object, got [1]"),
    ];
    for (text, json_path, message) in cases {
        assert_eq!(parse(text).unwrap_err(), (json_path.to_string(), message.to_string()), "{text}");
    }
    let (at, message) = parse(r#"{"id":"i","exec":{"args":[1,}}"#).unwrap_err();
    assert_eq!(at, "exec.args[1]");
    assert!(message.starts_with("not valid JSON: "), "{message}");
    let (at, message) = parse(r#"{"id":"i"} trailing"#).unwrap_err();
    assert_eq!(at, "");
    assert!(message.contains("trailing characters"), "{message}");
    // Unknown keys and optional nulls are fine, as in the node.
    let m = parse(r#"{"id":"i","name":"n","type":"ASR","port":null,"extra":{"x":1},"exec":{"command":"c","args":[]}}"#)
        .unwrap();
    assert_eq!((m.port, m.task_type.as_str(), m.exec.cwd), (None, "ASR", None));
}

#[test]
fn the_task_type_mapping_has_defaults_and_takes_overrides() {
    let none = BTreeMap::new();
    let defaults: Vec<String> = ["asr", "nmt", "tts", "semantic", "phonetic", "punctuation", "tone", "lexicon"]
        .iter()
        .map(|k| task_type_of(k, &none))
        .collect();
    assert_eq!(
        defaults,
        ["ASR", "NMT", "TTS", "SEMANTIC_REPAIR", "PHONETIC_CORRECTION", "PUNCTUATION_RESTORE", "OTHER", "OTHER"]
    );
    let overrides =
        BTreeMap::from([("tone".to_string(), "TTS".to_string()), ("asr".to_string(), "ASR_BIG".to_string())]);
    assert_eq!(task_type_of("tone", &overrides), "TTS");
    assert_eq!(task_type_of("asr", &overrides), "ASR_BIG");
    assert_eq!(task_type_of("nmt", &overrides), "NMT");
}

#[test]
fn a_missing_folder_is_manifests_not_found_and_a_folder_without_a_manifest_is_passed_over() {
    let missing = fixture().join("no-such-folder");
    let e = expand(&[fixture(), missing.clone()]).unwrap_err();
    assert_eq!(e.code, ErrorCode::ManifestsNotFound);
    assert_eq!(e.message, format!("dirs[1]: no such folder: {}", missing.display()));
    let file = fixture().join("asr-whisper/service.json");
    let e = expand(std::slice::from_ref(&file)).unwrap_err();
    assert_eq!(
        (e.code, e.message),
        (ErrorCode::ManifestsNotFound, format!("dirs[0]: not a folder: {}", file.display()))
    );
    // `_fake` has no service.json: no service, no diagnostic.
    let only_scripts = expand(&[fixture().join("_fake")]).unwrap();
    assert_eq!(only_scripts, ExpandedServices::default());
}

#[test]
fn the_first_of_a_duplicate_id_is_kept_across_folders_too() {
    let first = folder(
        "dup-a",
        &[("x/service.json", r#"{"id":"x","name":"A","type":"asr","exec":{"command":"a","args":[]}}"#)],
    );
    let second = folder(
        "dup-b",
        &[("x/service.json", r#"{"id":"x","name":"B","type":"asr","exec":{"command":"b","args":[]}}"#)],
    );
    let out = expand(&[first.clone(), second.clone()]).unwrap();
    assert_eq!(out.manifests.len(), 1);
    assert_eq!(out.manifests[0].name, "A");
    assert_eq!(out.diagnostics[0].path, second.join("x/service.json").display().to_string());
    fs::remove_dir_all(first).unwrap();
    fs::remove_dir_all(second).unwrap();
}

const MANIFEST: &str = r#"{"id":"asr","name":"ASR","type":"asr","device":"gpu","port":8001,"exec":{"command":"python","args":["main.py"]},"env":{"A":"1"}}"#;

#[test]
fn a_services_entry_named_like_a_manifest_overrides_its_fields() {
    let base = folder("overrides", &[("services/asr/service.json", MANIFEST)]);
    let section = json!({
        "manifests": ["services"],
        "manifestTaskTypes": { "asr": "ASR_ZH" },
        "vramTimeoutMs": 5000,
        "services": [
            { "name": "asr", "gpu": { "vramMb": 3000 }, "onDemand": true, "readinessTimeoutMs": 240000,
              "restart": { "policy": "on-failure" }, "priority": 70, "env": { "B": "2" },
              "readiness": { "http": { "url": "http://127.0.0.1:8001/ready" } } },
            { "name": "tool", "command": "tool", "readiness": { "none": {} } }
        ]
    });
    let resolved = resolve_services_section(&section, &base, &mut Vec::new()).unwrap();
    assert!(resolved.section.get("manifests").is_none() && resolved.section.get("manifestTaskTypes").is_none());
    assert_eq!(resolved.section["vramTimeoutMs"], 5000);
    let asr = &resolved.section["services"][0];
    assert_eq!(asr["gpu"], json!({ "key": "auto", "taskTypes": ["ASR_ZH"], "vramMb": 3000 }));
    assert_eq!(asr["env"], json!({ "A": "1", "B": "2", "PYTHONIOENCODING": "utf-8" }));
    assert_eq!(asr["readiness"], json!({ "http": { "url": "http://127.0.0.1:8001/ready" } }), "replaced whole");
    assert_eq!(asr["cwd"], base.join("services/asr").display().to_string());
    let config = &resolved.config;
    let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["asr", "tool"]);
    let spec = &config.services[0];
    assert!(spec.on_demand);
    assert_eq!(spec.readiness_timeout_ms.get(), 240_000);
    assert_eq!(spec.priority.map(|p| p.get()), Some(70));
    assert_eq!(spec.restart.policy, crate::services::RestartPolicy::OnFailure);
    assert_eq!(spec.gpu.as_ref().unwrap().vram_mb.map(|m| m.get()), Some(3000));
    let report = resolved.expanded.unwrap();
    assert_eq!(report.manifests[0].task_type, "ASR_ZH");

    // gpu.key pins it; null removes a field (back to the default).
    let section =
        json!({ "manifests": ["services"], "services": [{ "name": "asr", "gpu": { "key": "gpu:1" }, "port": null }] });
    let resolved = resolve_services_section(&section, &base, &mut Vec::new()).unwrap();
    assert_eq!(resolved.config.services[0].gpu.as_ref().unwrap().key, "gpu:1");
    assert!(resolved.config.services[0].port.is_none());
    fs::remove_dir_all(base).unwrap();
}

#[test]
fn errors_in_a_merged_section_name_the_config_entry_or_the_manifest_they_came_from() {
    let base = folder("override-errors", &[("services/asr/service.json", MANIFEST)]);
    let resolve = |services: Value| {
        resolve_services_section(&json!({ "manifests": ["services"], "services": services }), &base, &mut Vec::new())
            .unwrap_err()
    };
    let e = resolve(
        json!([{ "name": "tool", "command": "t", "readiness": { "none": {} } }, { "name": "asr", "gpu": { "vramMb": "lots" } }]),
    );
    assert_eq!(e.code, ErrorCode::InvalidConfig);
    assert!(e.message.starts_with("services.services[1].gpu.vramMb: expected an integer"), "{}", e.message);
    let e = resolve(json!([{ "name": "asr", "dependsOn": ["nowhere"] }]));
    assert_eq!(e.message, "services.services[0].dependsOn[0]: unknown service \"nowhere\"");
    let e = resolve(
        json!([{ "name": "x", "command": "t", "readiness": { "none": {} } }, { "name": "x", "command": "t", "readiness": { "none": {} } }]),
    );
    assert_eq!(e.message, "services.services[1].name: duplicate service name \"x\"");
    // A services entry with no manifest of its name is a whole service, checked as one.
    let e = resolve(json!([{ "name": "typo", "args": [] }]));
    assert!(e.message.starts_with("services.services[0]: missing field"), "{}", e.message);
    let e = resolve_services_section(&json!({ "manifests": ["elsewhere"] }), &base, &mut Vec::new()).unwrap_err();
    assert_eq!(e.code, ErrorCode::ManifestsNotFound);
    assert_eq!(e.message, format!("services.manifests[0]: no such folder: {}", base.join("elsewhere").display()));
    let e = resolve_services_section(&json!({ "manifests": "services" }), &base, &mut Vec::new()).unwrap_err();
    assert!(e.message.starts_with("services.manifests: expected a sequence"), "{}", e.message);
    fs::remove_dir_all(base).unwrap();
}

#[test]
fn a_section_without_manifests_is_validated_as_before() {
    let section = json!({ "services": [{ "name": "a", "command": "a", "readiness": { "none": {} } }] });
    let resolved = resolve_services_section(&section, Path::new("/nowhere"), &mut Vec::new()).unwrap();
    assert_eq!(resolved.section, section);
    assert!(resolved.expanded.is_none());
    let e = resolve_services_section(&json!({ "services": [{ "name": "a" }] }), Path::new("/"), &mut Vec::new())
        .unwrap_err();
    assert!(e.message.starts_with("services.services[0]: missing field"), "{}", e.message);
}

#[test]
fn the_arguments_form_names_a_bad_dir_or_option_and_labels_folders_as_given() {
    let message = |dir: Value, options: Option<Value>| {
        let error = expand_manifests_argument(&dir, options.as_ref()).unwrap_err();
        (error.code, error.message)
    };
    let bad_dir = |got: &str| {
        (ErrorCode::InvalidArgument, format!("dir: expected a folder path or a non-empty array of them, got {got}"))
    };
    assert_eq!(message(json!(""), None), bad_dir("\"\""));
    assert_eq!(message(json!([]), None), bad_dir("[]"));
    assert_eq!(message(json!(["a", 3]), None), bad_dir("[\"a\",3]"));
    let dir = json!(fixture().to_str().unwrap());
    let (code, text) = message(dir.clone(), Some(json!({ "taskTypes": { "tone": 3 } })));
    assert_eq!(code, ErrorCode::InvalidArgument);
    assert!(text.starts_with("options.taskTypes.tone: invalid type: integer `3`"), "{text}");
    let (_, text) = message(dir.clone(), Some(json!({ "other": 1 })));
    assert!(text.starts_with("options.other: unknown field `other`"), "{text}");
    let missing = fixture().join("missing");
    let (code, text) = message(json!([fixture(), missing]), None);
    assert_eq!((code, text), (ErrorCode::ManifestsNotFound, format!("dir[1]: no such folder: {}", missing.display())));
    let (_, text) = message(json!(missing), None);
    assert!(text.starts_with("dir: no such folder"), "{text}");
    let mapped = expand_manifests_argument(&dir, Some(&json!({ "taskTypes": { "tone": "TTS" } }))).unwrap();
    assert_eq!(mapped.services.len(), expand(&[fixture()]).unwrap().services.len());
}
