//! The status page `/`: one server-rendered HTML page for on-call, made
//! from the very JSON `/status` serves (so the two never disagree), with the
//! RTO of the last drills as an inline SVG chart. No JavaScript.
//!
//! Everything in that JSON that is text — plan names, file names, errors,
//! snapshot ids, alert summaries — comes from plan files and repositories
//! and is treated as hostile: it reaches the HTML only through [`escape`].
//! Fields other parts of the daemon may not publish yet (`lock_coverage`,
//! `archive`, `alerts`) are shown when present and as "—" otherwise.

use std::fmt::Write;

use chrono::{DateTime, Utc};
use serde_json::Value;

/// The page refreshes itself this often (seconds).
const REFRESH_SECONDS: u32 = 30;

/// The RTO chart's size in CSS pixels, and its margins: left for the
/// min/max labels, bottom for the first and last drill's date.
const CHART_W: f64 = 220.0;
const CHART_H: f64 = 74.0;
const CHART_LEFT: f64 = 52.0;
const CHART_RIGHT: f64 = 8.0;
const CHART_TOP: f64 = 8.0;
const CHART_BOTTOM: f64 = 18.0;

/// `s` with the five characters that mean something in HTML text and in
/// quoted attribute values replaced by references.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page for one `/status` document.
pub fn render(status: &Value) -> String {
    let now = parse_time(&status["now"]);
    let plans: &[Value] = status["plans"].as_array().map_or(&[], Vec::as_slice);
    let mut out = String::with_capacity(4096 + plans.len() * 4096);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>holdfast status</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
    );
    let failing = plans.iter().filter(|p| health(p) == "failing").count();
    let invalid = plans.iter().filter(|p| health(p) == "invalid").count();
    let _ = write!(
        out,
        "<header>\n<h1>holdfast</h1>\n<p id=\"daemon\">daemon time {} UTC (all times UTC) · {} · {} plan{}: {} failing, {} invalid · \
         <a href=\"/status\">/status</a> · <a href=\"/metrics\">/metrics</a></p>\n</header>\n",
        time_html(&status["now"]),
        if status["stopping"] == true {
            "<strong class=\"bad\" id=\"stopping\">stopping: no new jobs</strong>"
        } else {
            "<span id=\"running\">running</span>"
        },
        plans.len(),
        if plans.len() == 1 { "" } else { "s" },
        failing,
        invalid,
    );
    if plans.is_empty() {
        out.push_str("<p>No plans.</p>\n");
    } else {
        out.push_str(
            "<table>\n<thead><tr><th>plan</th><th>last backup</th><th>outcome</th>\
             <th>restorable</th><th>lock coverage</th><th>archive</th><th>alerts</th>\
             <th>next runs</th><th>drills (RTO)</th></tr></thead>\n<tbody>\n",
        );
        for p in plans {
            plan_row(&mut out, p, now);
        }
        out.push_str("</tbody>\n</table>\n");
    }
    out.push_str("</body>\n</html>\n");
    out
}

const STYLE: &str = "body{font:13px/1.4 system-ui,sans-serif;margin:1em;color:#222}\
h1{font-size:1.3em;margin:0 0 .2em}\
table{border-collapse:collapse;width:100%}\
th,td{border-bottom:1px solid #ddd;padding:.35em .4em;text-align:left;vertical-align:top}\
td.plan{max-width:20em;overflow-wrap:anywhere}\
th{background:#f4f4f4;font-weight:600}\
tr[data-health=failing]{background:#fff4f4}tr[data-health=invalid]{background:#fffbe6}\
.ok{color:#17803d}.bad{color:#c0262d;font-weight:600}.muted{color:#777}\
.err{color:#c0262d;font-size:.9em;max-width:24em;overflow-wrap:anywhere}\
ul{margin:0;padding-left:0;list-style:none}code{font-size:.9em}\
time,td.next li,.age{white-space:nowrap}\
svg.rto{display:block;margin-top:.2em}";

/// A row's class: `invalid` (the file does not validate), `failing` (the
/// last backup or drill failed, or an alert fires), else `ok`.
fn health(p: &Value) -> &'static str {
    if p["valid"] == false {
        "invalid"
    } else if p["last_runs"]["backup"]["outcome"] == "failed"
        || p["last_runs"]["drill"]["outcome"] == "failed"
        || p["drills"]
            .as_array()
            .and_then(|d| d.last())
            .is_some_and(|d| d["passed"] == false)
        || p["alerts"].as_array().is_some_and(|a| !a.is_empty())
    {
        "failing"
    } else {
        "ok"
    }
}

fn plan_row(out: &mut String, p: &Value, now: Option<DateTime<Utc>>) {
    let name = p["plan"].as_str().unwrap_or("?");
    let class = health(p);
    let _ = writeln!(
        out,
        "<tr data-plan=\"{}\" data-health=\"{class}\">",
        escape(name)
    );

    // The plan, its file, and why the file does not validate.
    let _ = write!(out, "<td class=\"plan\"><strong>{}</strong>", escape(name));
    if let Some(file) = p["file"].as_str() {
        let _ = write!(out, "<br><code class=\"muted\">{}</code>", escape(file));
    }
    if p["valid"] == false {
        let scheduled = p["next_runs"].as_object().is_some_and(|m| !m.is_empty());
        let _ = write!(
            out,
            "<div class=\"err invalid\">invalid: {}<br><span class=\"muted\">{}</span></div>",
            escape(p["error"].as_str().unwrap_or("(no reason given)")),
            if scheduled {
                "its previous version keeps running"
            } else {
                "not scheduled"
            }
        );
    }
    if let Some(job) = p["running"].as_str() {
        let _ = write!(out, "<div class=\"muted\">running: {}</div>", escape(job));
    }
    out.push_str("</td>\n");

    // The last snapshot, its age, and how the last backup went.
    let last = &p["last_backup"];
    let rejected = rejected_html(&p["rejected"]);
    match last["snapshot"].as_str() {
        Some(id) => {
            let age = last["age_seconds"].as_i64().map_or(String::new(), ago);
            let _ = writeln!(
                out,
                "<td class=\"snapshot\"><code>{}</code> <strong class=\"age\">{age}</strong><br>{}{rejected}</td>",
                escape(id),
                time_html(&last["time"])
            );
        }
        None => {
            let _ = writeln!(out, "<td class=\"snapshot muted\">none yet{rejected}</td>");
        }
    }
    let backup = &p["last_runs"]["backup"];
    let _ = writeln!(out, "<td class=\"outcome\">{}</td>", outcome_html(backup));

    // How far restores reach.
    let r = &p["restorable"];
    if r.is_object() {
        let _ = writeln!(
            out,
            "<td class=\"restorable\">{}<br>→ {}</td>",
            time_html(&r["from"]),
            time_after_html(&r["to"], &r["from"])
        );
    } else {
        out.push_str("<td class=\"restorable muted\">—</td>\n");
    }

    let _ = writeln!(
        out,
        "<td class=\"locks\">{}</td>",
        lock_html(&p["lock_coverage"])
    );
    let _ = writeln!(
        out,
        "<td class=\"archive\">{}</td>",
        if p["binlog"].is_object() {
            binlog_html(&p["binlog"], &p["rpo_seconds"])
        } else {
            archive_html(&p["archive"], &p["rpo_seconds"])
        }
    );
    let _ = writeln!(
        out,
        "<td class=\"alerts\">{}</td>",
        alerts_html(&p["alerts"])
    );
    let _ = writeln!(
        out,
        "<td class=\"next\">{}</td>",
        next_runs_html(&p["next_runs"], now)
    );
    let drills: &[Value] = p["drills"].as_array().map_or(&[], Vec::as_slice);
    let _ = writeln!(
        out,
        "<td class=\"drills\">{}</td>",
        drills_html(drills, &p["last_runs"]["drill"], now)
    );
    out.push_str("</tr>\n");
}

/// Objects the plan's listing does not believe (`[{object, kind, detail}]`):
/// each named, since each is someone's forgery or damage to look into.
fn rejected_html(r: &Value) -> String {
    let Some(list) = r.as_array().filter(|l| !l.is_empty()) else {
        return String::new();
    };
    let mut s = format!(
        "<div class=\"err rejected\"><strong class=\"bad\">{} rejected object(s)</strong> (ignored; run verify)",
        list.len()
    );
    for item in list {
        let _ = write!(
            s,
            "<br><code>{}</code>: {}",
            escape(item["object"].as_str().unwrap_or("?")),
            escape(item["detail"].as_str().unwrap_or(""))
        );
    }
    s.push_str("</div>");
    s
}

/// A job's last outcome: ok, or failed with its error.
fn outcome_html(run: &Value) -> String {
    match run["outcome"].as_str() {
        Some("ok") => {
            let mut s = "<span class=\"ok\">ok</span>".to_string();
            if let Some(d) = run["duration_seconds"].as_f64() {
                let _ = write!(s, " <span class=\"muted\">in {}</span>", seconds(d));
            }
            s
        }
        Some(other) => {
            let mut s = format!("<span class=\"bad\">{}</span>", escape(other));
            if let Some(n) = run["attempts"].as_u64().filter(|n| *n > 1) {
                let _ = write!(s, " <span class=\"muted\">after {n} attempts</span>");
            }
            if let Some(e) = run["error"].as_str() {
                let _ = write!(s, "<div class=\"err\">{}</div>", escape(e));
            }
            s
        }
        None => "<span class=\"muted\">not run yet</span>".to_string(),
    }
}

/// `{"seconds": N, "until": TIME}` (and, when known, the weakest snapshot).
fn lock_html(l: &Value) -> String {
    if !l.is_object() {
        return "<span class=\"muted\">—</span>".to_string();
    }
    let mut s = match l["seconds"].as_i64() {
        Some(n) if n <= 0 => format!("<span class=\"bad\">none ({} ago)</span>", span(-n)),
        Some(n) => span(n),
        None => "<span class=\"muted\">unknown</span>".to_string(),
    };
    if !l["until"].is_null() {
        let _ = write!(
            s,
            "<br><span class=\"muted\">until</span> {}",
            time_html(&l["until"])
        );
    }
    if let Some(w) = l["weakest"].as_str() {
        let _ = write!(s, "<br><span class=\"muted\">weakest {}</span>", escape(w));
    }
    s
}

/// The archive watch: `{"lag_seconds", "stalled", "rpo_seconds",
/// "last_archived_wal", …}`; the RPO may also be the plan's own field.
fn archive_html(a: &Value, plan_rpo: &Value) -> String {
    if !a.is_object() {
        return "<span class=\"muted\">—</span>".to_string();
    }
    let mut parts = Vec::new();
    if a["stalled"] == true {
        let mut s = "<span class=\"bad\">STALLED</span>".to_string();
        if let Some(why) = a["stalled_because"].as_str() {
            let _ = write!(s, "<div class=\"err\">{}</div>", escape(why));
        }
        parts.push(s);
    }
    if let Some(lag) = a["lag_seconds"].as_f64() {
        parts.push(format!("lag {}", seconds(lag)));
    }
    if let Some(rpo) = a["rpo_seconds"].as_f64().or(plan_rpo.as_f64()) {
        parts.push(format!("RPO {}", seconds(rpo)));
    }
    if let Some(wal) = a["last_archived_wal"].as_str() {
        parts.push(format!("last <code>{}</code>", escape(wal)));
    }
    if let Some(e) = a["error"].as_str() {
        parts.push(format!("<div class=\"err\">{}</div>", escape(e)));
    }
    if parts.is_empty() {
        return "<span class=\"muted\">not looked at yet</span>".to_string();
    }
    parts.join("<br>")
}

/// A MariaDB plan's binlog archiver (`archive::Status`): `{"file",
/// "archived_offset", "newest_event", "gap", "restarts", "last_error", …}`;
/// the RPO is the plan's own field.
fn binlog_html(b: &Value, plan_rpo: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(gap) = b["gap"].as_array().filter(|g| !g.is_empty()) {
        let names: Vec<String> = gap
            .iter()
            .take(5)
            .map(|n| format!("<code>{}</code>", escape(n.as_str().unwrap_or("?"))))
            .collect();
        let more = gap.len().saturating_sub(names.len());
        parts.push(format!(
            "<span class=\"bad\">GAP</span> {}{}",
            names.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    }
    if let Some(rpo) = plan_rpo.as_f64() {
        parts.push(format!("RPO {}", seconds(rpo)));
    }
    if let Some(file) = b["file"].as_str() {
        let offset = b["archived_offset"].as_u64().unwrap_or(0);
        parts.push(format!(
            "binlog <code>{}</code> to byte {offset}",
            escape(file)
        ));
    }
    if b["newest_event"].is_string() {
        parts.push(format!("newest event {}", time_html(&b["newest_event"])));
    }
    if let Some(n) = b["restarts"].as_u64().filter(|n| *n > 0) {
        parts.push(format!("{n} restart(s)"));
    }
    if let Some(e) = b["last_error"].as_str() {
        parts.push(format!("<div class=\"err\">{}</div>", escape(e)));
    }
    if parts.is_empty() {
        return "<span class=\"muted\">binlog archiver starting</span>".to_string();
    }
    parts.join("<br>")
}

/// Firing alerts: `[{"kind", "since", "summary"}]`.
fn alerts_html(a: &Value) -> String {
    let Some(list) = a.as_array() else {
        return "<span class=\"muted\">—</span>".to_string();
    };
    if list.is_empty() {
        return "<span class=\"ok\">none</span>".to_string();
    }
    let mut s = "<ul>".to_string();
    for alert in list {
        let _ = write!(
            s,
            "<li><span class=\"bad\">{}</span> since {}",
            escape(alert["kind"].as_str().unwrap_or("alert")),
            time_html(&alert["since"])
        );
        if let Some(summary) = alert["summary"].as_str() {
            let _ = write!(s, "<div class=\"err\">{}</div>", escape(summary));
        }
        s.push_str("</li>");
    }
    s.push_str("</ul>");
    s
}

fn next_runs_html(n: &Value, now: Option<DateTime<Utc>>) -> String {
    let Some(map) = n.as_object().filter(|m| !m.is_empty()) else {
        return "<span class=\"muted\">—</span>".to_string();
    };
    let mut s = "<ul>".to_string();
    // Jobs the plan never runs (no schedule) are left out.
    for (job, at) in map.iter().filter(|(_, at)| !at.is_null()) {
        let when = match (parse_time(at), now) {
            (Some(t), Some(now)) if t <= now => "due now".to_string(),
            (Some(t), Some(now)) => format!("in {}", span((t - now).num_seconds())),
            _ => time_html(at),
        };
        let _ = write!(
            s,
            "<li>{} <span title=\"{}\">{when}</span></li>",
            escape(job),
            escape(at.as_str().unwrap_or(""))
        );
    }
    s.push_str("</ul>");
    s
}

/// The newest drill's outcome and the RTO chart; the last drill job's
/// error when it failed before recording anything.
fn drills_html(drills: &[Value], last_job: &Value, now: Option<DateTime<Utc>>) -> String {
    let mut s = String::new();
    match drills.last() {
        Some(d) => {
            let passed = d["passed"] == true;
            let _ = write!(
                s,
                "<span class=\"{}\">{}</span> RTO {}",
                if passed { "ok" } else { "bad" },
                if passed { "passed" } else { "FAILED" },
                d["rto_seconds"].as_f64().map_or("?".to_string(), seconds)
            );
            if let Some(rpo) = d["rpo_seconds"].as_f64() {
                let _ = write!(s, ", RPO {}", seconds(rpo));
            }
            if let (Some(t), Some(now)) = (parse_time(&d["started_at"]), now) {
                let _ = write!(
                    s,
                    " <span class=\"muted\">{}</span>",
                    ago((now - t).num_seconds())
                );
            }
            let _ = write!(
                s,
                " <span class=\"muted\">({} drill{})</span>",
                drills.len(),
                if drills.len() == 1 { "" } else { "s" }
            );
            s.push_str(&rto_chart(drills));
        }
        None => s.push_str("<span class=\"muted\">no drills recorded</span>"),
    }
    if last_job["outcome"] == "failed" {
        if let Some(e) = last_job["error"].as_str() {
            let _ = write!(
                s,
                "<div class=\"err\">last drill job failed: {}</div>",
                escape(e)
            );
        }
    }
    s
}

/// The RTO of each drill, oldest on the left, as an inline SVG: a line
/// through one point per drill, green when it passed and red when it
/// failed, each with a `<title>` tooltip; min and max on the left, the
/// first and last drill's date below.
pub fn rto_chart(drills: &[Value]) -> String {
    let points: Vec<(&Value, f64)> = drills
        .iter()
        .filter_map(|d| Some((d, d["rto_seconds"].as_f64()?)))
        .filter(|(_, rto)| rto.is_finite())
        .collect();
    if points.is_empty() {
        return String::new();
    }
    let min = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let max = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let (x0, x1) = (CHART_LEFT, CHART_W - CHART_RIGHT);
    let (y_top, y_bottom) = (CHART_TOP, CHART_H - CHART_BOTTOM);
    let x = |i: usize| {
        if points.len() == 1 {
            (x0 + x1) / 2.0
        } else {
            x0 + (x1 - x0) * i as f64 / (points.len() - 1) as f64
        }
    };
    let y = |v: f64| {
        if max > min {
            y_bottom - (y_bottom - y_top) * (v - min) / (max - min)
        } else {
            (y_top + y_bottom) / 2.0
        }
    };
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg class=\"rto\" data-drills=\"{n}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{CHART_W}\" height=\"{CHART_H}\" \
         viewBox=\"0 0 {CHART_W} {CHART_H}\" role=\"img\" aria-label=\"RTO of the last {n} drill(s): min {min_l}, max {max_l}\">\
         <title>RTO of the last {n} drill(s)</title>",
        n = points.len(),
        min_l = seconds(min),
        max_l = seconds(max),
    );
    // Axes, and the min/max labels (one when all drills took as long).
    let _ = write!(
        s,
        "<path d=\"M{x0} {y_top}V{y_bottom}H{x1}\" fill=\"none\" stroke=\"#bbb\" stroke-width=\"1\"/>"
    );
    let label_x = x0 - 4.0;
    if max > min {
        let _ = write!(
            s,
            "<text class=\"max\" x=\"{label_x}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\" fill=\"#555\">{}</text>\
             <text class=\"min\" x=\"{label_x}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\" fill=\"#555\">{}</text>",
            y_top + 4.0,
            seconds(max),
            y_bottom,
            seconds(min)
        );
    } else {
        let _ = write!(
            s,
            "<text class=\"max min\" x=\"{label_x}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\" fill=\"#555\">{}</text>",
            y(min) + 3.5,
            seconds(min)
        );
    }
    // Dates as precise as the drills' spread needs.
    let times: Vec<Option<DateTime<Utc>>> = points
        .iter()
        .map(|p| parse_time(&p.0["started_at"]))
        .collect();
    let spread = match (times[0], times[times.len() - 1]) {
        (Some(a), Some(b)) if times.len() > 1 => (b - a).num_seconds(),
        _ => -1,
    };
    let format = match spread {
        0..3600 => "%H:%M:%S",
        3600..172_800 => "%m-%d %H:%M",
        172_800.. => "%Y-%m-%d",
        _ => "%Y-%m-%d %H:%M",
    };
    let date = |i: usize| times[i].map_or(String::new(), |t| t.format(format).to_string());
    let first = date(0);
    let _ = write!(
        s,
        "<text x=\"{x0}\" y=\"{}\" font-size=\"9\" fill=\"#777\">{}</text>",
        CHART_H - 4.0,
        escape(&first)
    );
    if points.len() > 1 {
        let _ = write!(
            s,
            "<text x=\"{x1}\" y=\"{}\" font-size=\"9\" fill=\"#777\" text-anchor=\"end\">{}</text>",
            CHART_H - 4.0,
            escape(&date(points.len() - 1))
        );
        let line: Vec<String> = points
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{:.1},{:.1}", x(i), y(p.1)))
            .collect();
        let _ = write!(
            s,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"#888\" stroke-width=\"1.2\"/>",
            line.join(" ")
        );
    }
    for (i, (d, rto)) in points.iter().enumerate() {
        let passed = d["passed"] == true;
        let mut tip = format!(
            "drill {} {}: {}, RTO {}",
            d["id"].as_str().unwrap_or("?"),
            d["started_at"].as_str().unwrap_or("?"),
            if passed { "passed" } else { "FAILED" },
            seconds(*rto)
        );
        if let Some(rpo) = d["rpo_seconds"].as_f64() {
            let _ = write!(tip, ", RPO {}", seconds(rpo));
        }
        let _ = write!(
            s,
            "<circle class=\"{}\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{}\"><title>{}</title></circle>",
            if passed { "passed" } else { "failed" },
            x(i),
            y(*rto),
            if passed { "#17803d" } else { "#c0262d" },
            escape(&tip)
        );
    }
    s.push_str("</svg>");
    s
}

fn parse_time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str()?.parse().ok()
}

/// A time as `2026-03-02 08:05:00` (UTC) in a `<time>` element, "—" when absent.
fn time_html(v: &Value) -> String {
    match (v.as_str(), parse_time(v)) {
        (Some(raw), Some(t)) => format!(
            "<time datetime=\"{}\">{}</time>",
            escape(raw),
            t.format("%Y-%m-%d %H:%M:%S")
        ),
        (Some(raw), None) => escape(raw),
        _ => "<span class=\"muted\">—</span>".to_string(),
    }
}

/// Like [`time_html`], but only the time of day when it falls on the
/// same date as `earlier`.
fn time_after_html(v: &Value, earlier: &Value) -> String {
    match (v.as_str(), parse_time(v), parse_time(earlier)) {
        (Some(raw), Some(t), Some(e)) if t.date_naive() == e.date_naive() => format!(
            "<time datetime=\"{}\">{}</time>",
            escape(raw),
            t.format("%H:%M:%S")
        ),
        _ => time_html(v),
    }
}

/// An age: `just now`, `42s ago`, `3m ago`, `5h 2m ago`, `4d 3h ago`.
fn ago(secs: i64) -> String {
    if secs < 1 {
        "just now".to_string()
    } else {
        format!("{} ago", span(secs))
    }
}

/// Whole seconds, humanly: `42s`, `3m 5s`, `5h 2m`, `4d 3h`.
fn span(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 if s % 60 == 0 => format!("{}m", s / 60),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// A measured duration: `420 ms`, `4.21s`, `12.3s`, `4m 12s`.
fn seconds(secs: f64) -> String {
    if !secs.is_finite() {
        return "?".to_string();
    }
    if secs < 1.0 {
        format!("{:.0} ms", secs * 1000.0)
    } else if secs < 10.0 {
        format!("{secs:.2}s")
    } else if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        span(secs.round() as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(name: &str) -> Value {
        json!({
            "plan": name,
            "file": format!("/etc/holdfast/plans/{name}.yaml"),
            "valid": true,
            "error": null,
            "running": null,
            "next_runs": {"backup": "2026-03-02T08:05:00Z", "drill": null, "verify": "2026-03-09T00:00:00Z"},
            "last_runs": {"backup": {
                "started_at": "2026-03-02T08:00:00Z", "finished_at": "2026-03-02T08:00:02Z",
                "outcome": "ok", "error": null, "summary": "saved", "attempts": 1, "duration_seconds": 2.0,
            }},
            "last_backup": {"snapshot": "3f2a91c0", "time": "2026-03-02T08:00:00Z", "age_seconds": 180},
            "snapshots": 4,
            "restorable": {"from": "2026-03-01T08:00:00Z", "to": "2026-03-02T08:00:00Z"},
            "drills": [],
        })
    }

    fn status(plans: Vec<Value>) -> Value {
        json!({"now": "2026-03-02T08:03:00Z", "stopping": false, "plans": plans})
    }

    fn drill(id: &str, at: &str, passed: bool, rto: f64) -> Value {
        json!({"id": id, "started_at": at, "passed": passed, "rto_seconds": rto, "rpo_seconds": 60.0})
    }

    /// The `<tr>` of plan `name`.
    fn row<'a>(html: &'a str, name: &str) -> &'a str {
        let start = html
            .find(&format!("<tr data-plan=\"{name}\""))
            .unwrap_or_else(|| panic!("no row for {name} in {html}"));
        let end = start + html[start..].find("</tr>").unwrap();
        &html[start..end]
    }

    #[test]
    fn a_healthy_plan_shows_its_snapshot_age_window_and_next_runs() {
        let html = render(&status(vec![plan("app")]));
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"30\">"));
        assert!(
            html.contains("daemon time <time datetime=\"2026-03-02T08:03:00Z\">2026-03-02 08:03:00</time> UTC"),
            "{html}"
        );
        assert!(html.contains("id=\"running\""), "not stopping");
        let r = row(&html, "app");
        assert!(r.contains("data-health=\"ok\""), "{r}");
        assert!(r.contains("<code>3f2a91c0</code>"), "{r}");
        assert!(r.contains("<strong class=\"age\">3m ago</strong>"), "{r}");
        assert!(r.contains("<span class=\"ok\">ok</span>"), "{r}");
        assert!(
            r.contains("2026-03-01 08:00:00</time><br>→ <time datetime=\"2026-03-02T08:00:00Z\">2026-03-02 08:00:00</time>"),
            "{r}"
        );
        assert!(
            r.contains("backup <span title=\"2026-03-02T08:05:00Z\">in 2m</span>"),
            "{r}"
        );
        assert!(
            r.contains("verify <span title=\"2026-03-09T00:00:00Z\">in 6d 15h</span>"),
            "{r}"
        );
        assert!(
            !r.contains("drill <span"),
            "a job without a schedule is left out: {r}"
        );
        // Fields not published: a dash, not an error.
        for cell in ["locks", "archive", "alerts"] {
            assert!(
                r.contains(&format!(
                    "<td class=\"{cell}\"><span class=\"muted\">—</span></td>"
                )),
                "{cell}: {r}"
            );
        }
        assert!(!html.contains("<script"), "no JavaScript");
    }

    #[test]
    fn every_string_from_plans_and_repositories_is_escaped() {
        let evil = "<script>alert('x')</script>&\"";
        let mut p = plan(evil);
        p["file"] = json!(format!("/plans/{evil}.yaml"));
        p["valid"] = json!(false);
        p["error"] = json!(format!("field `name` at line 1: {evil}"));
        p["last_backup"]["snapshot"] = json!(evil);
        p["last_runs"]["backup"]["outcome"] = json!("failed");
        p["last_runs"]["backup"]["error"] = json!(evil);
        p["alerts"] = json!([{"kind": evil, "since": evil, "summary": evil}]);
        p["archive"] = json!({"stalled": true, "stalled_because": evil, "last_archived_wal": evil, "error": evil});
        p["lock_coverage"] = json!({"seconds": 10, "until": evil, "weakest": evil});
        p["next_runs"] = json!({evil: evil});
        p["drills"] =
            json!([{"id": evil, "started_at": evil, "passed": false, "rto_seconds": 1.0}]);
        let html = render(&status(vec![p]));
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("'x'"), "{html}");
        assert!(!html.contains("&\""), "{html}");
        let escaped = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;";
        // Name (attribute and text), file, error, snapshot, backup error,
        // alert kind/since/summary, archive ×3, lock until/weakest, next
        // run job and title, drill tooltip.
        assert!(html.matches(escaped).count() >= 15, "{html}");
        assert!(
            html.contains(&format!("<tr data-plan=\"{escaped}\"")),
            "{html}"
        );
    }

    #[test]
    fn a_mariadb_plan_shows_its_binlog_archiver_and_names_a_gap() {
        let mut p = plan("shop");
        p["rpo_seconds"] = json!(12);
        p["binlog"] = json!({
            "file": "binlog.000042", "archived_offset": 73_400_320u64,
            "newest_event": "2026-03-02T08:04:48Z", "completed": 3, "parts": 9,
            "bytes": 1u64 << 30, "gap": ["binlog.000007", "binlog.000009"],
            "restarts": 1, "last_error": "mariadb-binlog exited: <lost connection>"
        });
        let html = render(&status(vec![p]));
        let r = row(&html, "shop");
        assert!(
            r.contains("<span class=\"bad\">GAP</span> <code>binlog.000007</code>, <code>binlog.000009</code>"),
            "{r}"
        );
        assert!(r.contains("RPO 12.0s"), "{r}");
        assert!(
            r.contains("binlog <code>binlog.000042</code> to byte 73400320"),
            "{r}"
        );
        assert!(
            r.contains("newest event <time datetime=\"2026-03-02T08:04:48Z\">"),
            "{r}"
        );
        assert!(r.contains("1 restart(s)"), "{r}");
        assert!(r.contains("&lt;lost connection&gt;"), "escaped: {r}");
    }

    #[test]
    fn escape_replaces_the_five_html_characters_and_nothing_else() {
        assert_eq!(escape("a<b>&\"c'd é"), "a&lt;b&gt;&amp;&quot;c&#39;d é");
        assert_eq!(escape(""), "");
    }

    #[test]
    fn a_plan_with_no_drills_says_so_and_draws_no_chart() {
        let html = render(&status(vec![plan("app")]));
        let r = row(&html, "app");
        assert!(r.contains("no drills recorded"), "{r}");
        assert!(!r.contains("<svg"), "{r}");
        assert_eq!(rto_chart(&[]), "");
    }

    #[test]
    fn a_failed_plan_shows_the_error_and_an_invalid_file_its_reason() {
        let mut failed = plan("db");
        failed["last_runs"]["backup"] = json!({
            "started_at": "2026-03-02T08:00:00Z", "finished_at": "2026-03-02T08:00:09Z",
            "outcome": "failed", "error": "unable to read /var/lib/db.sqlite: permission denied",
            "summary": null, "attempts": 5, "duration_seconds": 9.0,
        });
        failed["alerts"] = json!([{"kind": "backup_failed", "since": "2026-03-02T08:00:09Z", "summary": "backup of db failed"}]);
        let broken = json!({
            "plan": "broken", "file": "/plans/broken.yaml", "valid": false,
            "error": "/plans/broken.yaml: retention.keep_lsat: unknown field", "running": null,
            "next_runs": {}, "last_runs": {}, "last_backup": null, "snapshots": null,
            "restorable": null, "drills": [],
        });
        let html = render(&status(vec![failed, broken]));
        assert!(html.contains("2 plans: 1 failing, 1 invalid"), "{html}");
        let r = row(&html, "db");
        assert!(r.contains("data-health=\"failing\""), "{r}");
        assert!(r.contains("<span class=\"bad\">failed</span>"), "{r}");
        assert!(r.contains("after 5 attempts"), "{r}");
        assert!(
            r.contains("unable to read /var/lib/db.sqlite: permission denied"),
            "{r}"
        );
        assert!(r.contains("backup_failed</span> since <time"), "{r}");
        let r = row(&html, "broken");
        assert!(r.contains("data-health=\"invalid\""), "{r}");
        assert!(
            r.contains("invalid: /plans/broken.yaml: retention.keep_lsat: unknown field"),
            "{r}"
        );
        assert!(r.contains("not scheduled"), "{r}");
        assert!(r.contains("none yet"), "{r}");
    }

    #[test]
    fn a_stopping_daemon_says_so() {
        let mut st = status(vec![]);
        st["stopping"] = json!(true);
        let html = render(&st);
        assert!(html.contains("stopping: no new jobs"), "{html}");
        assert!(html.contains("No plans."), "{html}");
    }

    #[test]
    fn one_drill_is_one_point_in_the_middle_with_one_label() {
        let svg = rto_chart(&[drill("a1", "2026-03-01T08:00:00Z", true, 1.5)]);
        assert!(
            svg.starts_with("<svg class=\"rto\" data-drills=\"1\""),
            "{svg}"
        );
        assert_eq!(svg.matches("<circle").count(), 1, "{svg}");
        assert!(
            svg.contains("class=\"passed\" cx=\"132.0\" cy=\"32.0\""),
            "{svg}"
        );
        assert!(svg.contains("fill=\"#17803d\""), "{svg}");
        assert!(
            svg.contains("<title>drill a1 2026-03-01T08:00:00Z: passed, RTO 1.50s, RPO 1m</title>"),
            "{svg}"
        );
        assert!(svg.contains(">2026-03-01 08:00</text>"), "{svg}");
        assert_eq!(svg.matches(">1.50s</text>").count(), 1, "{svg}");
        assert!(!svg.contains("<polyline"), "{svg}");
        assert!(svg.ends_with("</svg>"));
    }

    #[test]
    fn several_drills_are_a_line_scaled_between_min_and_max_coloured_by_outcome() {
        let drills = [
            drill("a1", "2026-03-01T08:00:00Z", true, 2.0),
            drill("a2", "2026-03-02T08:00:00Z", false, 120.0),
            drill("a3", "2026-03-03T08:00:00Z", true, 10.0),
        ];
        let svg = rto_chart(&drills);
        assert!(svg.contains("data-drills=\"3\""), "{svg}");
        assert_eq!(svg.matches("<circle").count(), 3, "{svg}");
        // Oldest left at the bottom (min), the failed one at the top (max).
        assert!(
            svg.contains("class=\"passed\" cx=\"52.0\" cy=\"56.0\""),
            "{svg}"
        );
        assert!(
            svg.contains("class=\"failed\" cx=\"132.0\" cy=\"8.0\" r=\"3.5\" fill=\"#c0262d\""),
            "{svg}"
        );
        assert!(
            svg.contains("<polyline points=\"52.0,56.0 132.0,8.0 212.0,"),
            "{svg}"
        );
        assert!(
            svg.contains("class=\"max\"") && svg.contains(">2m</text>"),
            "{svg}"
        );
        assert!(
            svg.contains("class=\"min\"") && svg.contains(">2.00s</text>"),
            "{svg}"
        );
        assert!(
            svg.contains(">2026-03-01</text>") && svg.contains(">2026-03-03</text>"),
            "{svg}"
        );
        // Drills minutes apart: their times, to the second.
        let close = [
            drill("b1", "2026-03-01T08:00:00Z", true, 0.0053),
            drill("b2", "2026-03-01T08:00:05Z", true, 0.0148),
        ];
        let svg2 = rto_chart(&close);
        assert!(
            svg2.contains(">08:00:00</text>") && svg2.contains(">08:00:05</text>"),
            "{svg2}"
        );
        assert!(
            svg2.contains(">15 ms</text>") && svg2.contains(">5 ms</text>"),
            "{svg2}"
        );
        assert!(
            svg.contains("drill a2 2026-03-02T08:00:00Z: FAILED, RTO 2m"),
            "{svg}"
        );
        // The row shows the newest drill's outcome above the chart.
        let mut p = plan("app");
        p["drills"] = json!(drills);
        let html = render(&status(vec![p]));
        let r = row(&html, "app");
        assert!(
            r.contains("<span class=\"ok\">passed</span> RTO 10.0s, RPO 1m"),
            "{r}"
        );
        assert!(r.contains("(3 drills)"), "{r}");
        assert!(r.contains(&svg), "{r}");
    }

    #[test]
    fn ages_and_durations_read_like_a_person_would_say_them() {
        assert_eq!(ago(0), "just now");
        assert_eq!(ago(42), "42s ago");
        assert_eq!(ago(180), "3m ago");
        assert_eq!(ago(185), "3m 5s ago");
        assert_eq!(ago(5 * 3600 + 120), "5h 2m ago");
        assert_eq!(ago(4 * 86400 + 3 * 3600), "4d 3h ago");
        assert_eq!(seconds(0.421), "421 ms");
        assert_eq!(seconds(4.213), "4.21s");
        assert_eq!(seconds(12.34), "12.3s");
        assert_eq!(seconds(252.0), "4m 12s");
    }
}
