//! `holdfast key add|list|remove`

use std::path::PathBuf;

use super::render::{json as print_json, outln};
use super::PlanArg;
use crate::error::{Error, Exit};
use crate::secret::Secret;

pub async fn add(
    plan: &PlanArg,
    new_key_file: Option<&PathBuf>,
    new_key_env: Option<&str>,
    json: bool,
) -> Result<Exit, Error> {
    let plan = plan.load()?;
    let usage = |m: String| Error::new(Exit::Usage, anyhow::anyhow!(m));
    let mut created = None;
    let new = match (new_key_file, new_key_env) {
        (Some(path), None) if !path.exists() => {
            // A key file that does not exist yet: generate one (see
            // secret::generate_key), written before the key object so the
            // key is never in the repository without its file.
            let key = crate::secret::generate_key();
            crate::ops::write_new_key_file(path, &key)
                .map_err(|e| usage(format!("unable to create {}: {e}", path.display())))?;
            created = Some(path);
            key
        }
        (Some(path), None) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| usage(format!("unable to read {}: {e}", path.display())))?;
            text.trim().to_string()
        }
        (None, Some(var)) => std::env::var(var)
            .map_err(|_| usage(format!("environment variable {var} is not set")))?,
        _ => {
            return Err(usage(
                "give exactly one of --new-key-file and --new-key-env".into(),
            ))
        }
    };
    if new.is_empty() {
        return Err(usage("the new key is empty".into()));
    }
    let id = match crate::ops::keys::add(&plan, &Secret::new(new)).await {
        Ok(id) => id,
        Err(e) => {
            // The key never reached the repository: its new file goes too.
            if let Some(path) = created {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
    };
    if let Some(path) = created {
        eprintln!(
            "created the key file {} (0600) with a generated key; keep a copy as safe as the first key",
            path.display()
        );
    }
    if json {
        print_json(&serde_json::json!({"added": id.to_hex()}))?;
    } else {
        outln!(
            "added key {} to the repository of plan {}; keep the new passphrase or key file as safe as the first",
            id.short(),
            plan.name
        )?;
    }
    Ok(Exit::Ok)
}

pub async fn list(plan: &PlanArg, json: bool) -> Result<Exit, Error> {
    let plan = plan.load()?;
    let rows = crate::ops::keys::list(&plan).await?;
    if json {
        print_json(&rows)?;
        return Ok(Exit::Ok);
    }
    outln!(
        "{:<10} {:<21} {:<20} {:<12} status",
        "id",
        "created",
        "host",
        "user"
    )?;
    for r in &rows {
        let status = match (&r.error, r.current, r.removed) {
            (Some(e), _, _) => format!("unreadable: {e}"),
            (None, true, _) => "in use by this plan".into(),
            (None, false, true) => "removed (still readable until its lock ends)".into(),
            (None, false, false) => String::new(),
        };
        outln!(
            "{:<10} {:<21} {:<20} {:<12} {status}",
            &r.id[..8],
            r.created_at
                .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
                .unwrap_or_default(),
            r.host.as_deref().unwrap_or("-"),
            r.user.as_deref().unwrap_or("-"),
        )?;
    }
    Ok(Exit::Ok)
}

pub async fn remove(plan: &PlanArg, id: &str, json: bool) -> Result<Exit, Error> {
    let plan = plan.load()?;
    let report = crate::ops::keys::remove(&plan, id).await?;
    if json {
        print_json(&report)?;
        return Ok(Exit::Ok);
    }
    if report.deleted {
        outln!("removed key {}: its key object is deleted", &report.id[..8])?;
    } else {
        outln!(
            "marked key {} removed ({}); {}",
            &report.id[..8],
            report.marker,
            report.detail.as_deref().unwrap_or("")
        )?;
    }
    eprintln!("note: anyone who copied that key object and knows its passphrase can still unlock the repository's data key; only a new repository (a new data key) ends that");
    Ok(Exit::Ok)
}
