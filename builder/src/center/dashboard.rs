//! The dashboard: server-rendered HTML, inline CSS and SVG, no JavaScript, nothing fetched from
//! elsewhere (sites may have no internet). Every count links to the nodes behind it.

use super::db::{self, Counts, Cycle, Filter, HistoryRow, Node};
use super::model::{state_help, STATES};
use rusqlite::Connection;
use std::fmt::Write;
use std::time::Instant;

/// Cycles shown in the summary table.
pub const CYCLES_SHOWN: usize = 8;
/// Nodes listed under the summary (filter to see others).
pub const NODES_SHOWN: usize = 200;

pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Percent-encode a query or path component.
pub fn enc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

/// `YYYY-MM-DD HH:MM` UTC.
pub fn utc(t: i64) -> String {
    // Node clocks are untrusted: show anything outside years 0..9999 as out of range.
    if !(-62_167_219_200..=253_402_300_799).contains(&t) {
        return "out-of-range".into();
    }
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60
    )
}

pub fn ago(now: i64, t: i64) -> String {
    let d = now.saturating_sub(t).max(0);
    match d {
        0..=119 => format!("{d} s ago"),
        120..=7199 => format!("{} min ago", d / 60),
        7200..=172_799 => format!("{} h ago", d / 3600),
        _ => format!("{} d ago", d / 86_400),
    }
}

/// What the page was asked for.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub cycle: Option<String>,
    pub filter: Filter,
}

impl View {
    /// A link to this view with some parameters changed (`None` removes one).
    fn link(&self, cycle: Option<&str>, state: Option<&str>) -> String {
        let mut q: Vec<String> = Vec::new();
        if let Some(c) = cycle {
            q.push(format!("cycle={}", enc(c)));
        }
        if let Some(v) = &self.filter.variant {
            q.push(format!("variant={}", enc(v)));
        }
        if let Some((k, v)) = &self.filter.label {
            q.push(format!("label={}", enc(&format!("{k}={v}"))));
        }
        if let Some(s) = state {
            q.push(format!("state={}", enc(s)));
        }
        if q.is_empty() {
            "/".into()
        } else {
            format!("/?{}", q.join("&amp;"))
        }
    }
}

/// Everything the page shows, read in one go (and timed).
pub struct Page {
    pub now: i64,
    pub silent_after: i64,
    pub fleet: Counts,
    pub cycles: Vec<(Cycle, Counts)>,
    pub selected: Option<String>,
    pub done_times: Vec<i64>,
    pub nodes: Vec<Node>,
    pub nodes_total: u64,
    /// Keys waiting for acceptance (when the view asks for state=unaccepted).
    pub waiting: Vec<db::KeyRow>,
    pub variants: Vec<String>,
    pub labels: Vec<String>,
    /// Nodes with a key waiting for acceptance (not counted anywhere else).
    pub unaccepted: u64,
    /// Time spent in the summary queries (fleet + per-cycle counts).
    pub summary_ms: f64,
}

pub fn load(conn: &Connection, view: &View, silent_after: i64) -> anyhow::Result<Page> {
    let now = db::now();
    let cutoff = now - silent_after;
    let t0 = Instant::now();
    let counts_filter = Filter {
        state: None,
        ..view.filter.clone()
    };
    let fleet = db::counts(conn, None, &counts_filter, cutoff)?;
    let shown = db::cycles(conn, CYCLES_SHOWN)?;
    let cycles: Vec<(Cycle, Counts)> =
        if counts_filter.variant.is_none() && counts_filter.label.is_none() {
            let names: Vec<&str> = shown.iter().map(|c| c.cycle.as_str()).collect();
            let counts = db::counts_many(conn, &names, cutoff)?;
            shown.into_iter().zip(counts).collect()
        } else {
            let mut v = Vec::new();
            for c in shown {
                let n = db::counts(conn, Some(&c.cycle), &counts_filter, cutoff)?;
                v.push((c, n));
            }
            v
        };
    let summary_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let selected = match &view.cycle {
        Some(c) => Some(c.clone()),
        None => cycles.first().map(|(c, _)| c.cycle.clone()),
    };
    let done_times = match &selected {
        Some(c) => db::done_times(conn, c, &counts_filter)?,
        None => Vec::new(),
    };
    let (nodes, nodes_total) =
        db::nodes(conn, selected.as_deref(), &view.filter, cutoff, NODES_SHOWN)?;
    Ok(Page {
        now,
        silent_after,
        fleet,
        cycles,
        selected,
        done_times,
        nodes,
        nodes_total,
        waiting: if view.filter.state.as_deref() == Some("unaccepted") {
            db::keys(conn, None, Some("unaccepted"))?
        } else {
            Vec::new()
        },
        variants: db::variants(conn)?,
        labels: db::labels(conn)?,
        unaccepted: db::unaccepted_count(conn)?,
        summary_ms,
    })
}

const CSS: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:16px 24px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:20px 0 6px}
table{border-collapse:collapse;background:#fff}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#eee}td.l,th.l{text-align:left}
tr.sel td{background:#eef5ff}
a{color:#0645ad;text-decoration:none}a:hover{text-decoration:underline}
.s-done{color:#1a7f37}.s-failed,.s-rolled-back,.s-error{color:#c62828;font-weight:600}
.s-quarantined{color:#8e24aa;font-weight:600}.s-silent{color:#777;font-weight:600}
.s-deferred,.s-pending{color:#b26a00}.s-ready{color:#1565c0}
.muted{color:#777}form{margin:8px 0}select,input,button{font:inherit;margin-right:8px}
.reason{max-width:420px;overflow:hidden;text-overflow:ellipsis;text-align:left}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px}dt{color:#555}dd{margin:0}
pre{background:#fff;border:1px solid #ddd;padding:8px;max-width:1000px;overflow:auto}
";

fn head(title: &str) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width\"><title>{}</title>\
         <style>{CSS}</style></head><body>",
        esc(title)
    )
}

fn select(name: &str, label: &str, options: &[String], current: Option<&str>) -> String {
    let mut s = format!("<label>{label} <select name={name}><option value=\"\">all</option>");
    for o in options {
        let sel = if Some(o.as_str()) == current {
            " selected"
        } else {
            ""
        };
        let _ = write!(s, "<option{sel}>{}</option>", esc(o));
    }
    s + "</select></label>"
}

fn pct(n: u64, of: u64) -> String {
    if of == 0 {
        "–".into()
    } else {
        format!("{:.1}%", n as f64 * 100.0 / of as f64)
    }
}

pub fn render(view: &View, p: &Page) -> String {
    let mut h = head("edgepatch fleet");
    let hours = p.silent_after / 3600;
    let _ = write!(
        h,
        "<h1>edgepatch fleet</h1><p class=muted id=summary>{} nodes · {} done · \
         <span class=s-silent>{} silent</span> (not seen for {hours} h) · \
         <a id=unaccepted href=\"/?state=unaccepted\">{} unaccepted</a> · {} UTC</p>",
        p.fleet.nodes,
        p.fleet.get("done"),
        p.fleet.get("silent"),
        p.unaccepted,
        utc(p.now)
    );
    // Filters.
    let cycles: Vec<String> = p.cycles.iter().map(|(c, _)| c.cycle.clone()).collect();
    let states: Vec<String> = STATES.iter().map(|s| s.to_string()).collect();
    let label = view.filter.label.as_ref().map(|(k, v)| format!("{k}={v}"));
    let _ = write!(
        h,
        "<form method=get action=\"/\">{}{}{}{}<button>filter</button> <a href=\"/\">clear</a></form>",
        select("cycle", "cycle", &cycles, p.selected.as_deref()),
        select("variant", "variant", &p.variants, view.filter.variant.as_deref()),
        select("label", "label", &p.labels, label.as_deref()),
        select("state", "state", &states, view.filter.state.as_deref()),
    );
    // Summary per cycle.
    h += "<h2>Cycles</h2><table id=cycles><tr><th class=l>cycle</th><th>nodes</th>";
    for s in STATES {
        let _ = write!(h, "<th title=\"{}\">{s}</th>", esc(state_help(s)));
    }
    h += "<th>done %</th><th title=\"hit a failure, then done with no operator action\">healed</th></tr>";
    let mut rows: Vec<(Option<&str>, &Counts)> = p
        .cycles
        .iter()
        .map(|(c, n)| (Some(c.cycle.as_str()), n))
        .collect();
    rows.push((None, &p.fleet));
    for (cycle, n) in rows {
        let sel = if cycle.is_some() && cycle == p.selected.as_deref() {
            " class=sel"
        } else {
            ""
        };
        let name = match cycle {
            Some(c) => format!("<a href=\"{}\">{}</a>", view.link(Some(c), None), esc(c)),
            None => "<i>latest state</i>".into(),
        };
        let key = esc(cycle.unwrap_or("latest"));
        let _ = write!(h, "<tr{sel}><td class=l>{name}</td><td>{}</td>", n.nodes);
        for s in STATES {
            let v = n.get(s);
            let cell = if v == 0 {
                "<span class=muted>0</span>".to_string()
            } else {
                format!("<a href=\"{}\">{v}</a>", view.link(cycle, Some(s)))
            };
            let _ = write!(
                h,
                "<td class=s-{s} data-cycle=\"{key}\" data-state=\"{s}\">{cell}</td>"
            );
        }
        let healed = if cycle.is_some() && n.hit_failure > 0 {
            format!(
                "<span title=\"{} of {} nodes that hit a failure\">{}/{} {}</span>",
                n.self_healed,
                n.hit_failure,
                n.self_healed,
                n.hit_failure,
                pct(n.self_healed, n.hit_failure)
            )
        } else {
            "<span class=muted>–</span>".into()
        };
        let _ = write!(
            h,
            "<td>{}</td><td data-cycle=\"{key}\" data-state=\"self-healed\">{healed}</td></tr>",
            pct(n.get("done"), n.nodes)
        );
    }
    h += "</table>";
    let _ = write!(
        h,
        "<p class=muted>Hover a column for its meaning. A node is <b>silent</b> when it has not \
         been seen for {hours} h and has not finished the cycle.</p>"
    );
    // Plot.
    if let Some(c) = &p.selected {
        let total = p
            .cycles
            .iter()
            .find(|(x, _)| &x.cycle == c)
            .map_or(p.fleet.nodes, |(_, n)| n.nodes);
        let first = p
            .cycles
            .iter()
            .find(|(x, _)| &x.cycle == c)
            .map(|(x, _)| x.first_seen);
        let _ = write!(h, "<h2>Completion of {} over time</h2>", esc(c));
        h += &plot(&p.done_times, total, first, p.now);
    }
    // Nodes.
    let what = match &p.selected {
        Some(c) => format!("state in {}", esc(c)),
        None => "latest state".into(),
    };
    let _ = write!(
        h,
        "<h2>Nodes ({what}{}) — {} shown of {}</h2>",
        view.filter
            .state
            .as_ref()
            .map(|s| format!(", only {}", esc(s)))
            .unwrap_or_default(),
        p.nodes.len(),
        p.nodes_total
    );
    let mut cli = String::from("edgepatch-builder fleet --db DB list");
    if let Some(c) = &p.selected {
        let _ = write!(cli, " --cycle {c}");
    }
    if let Some(st) = &view.filter.state {
        let _ = write!(cli, " --state {st}");
    }
    if let Some(v) = &view.filter.variant {
        let _ = write!(cli, " --variant {v}");
    }
    if let Some((k, v)) = &view.filter.label {
        let _ = write!(cli, " --label {k}={v}");
    }
    let _ = write!(
        h,
        "<p class=muted id=same-list>Same list on the command line: <code>{} --json</code></p>",
        esc(&cli)
    );
    if view.filter.state.as_deref() == Some("unaccepted") {
        let _ = write!(
            h,
            "<h2>Keys waiting for acceptance — {}</h2><p class=muted>Compare each fingerprint \
             with <code>edgepatch status</code> on the node, then <code>edgepatch-builder fleet \
             --db DB accept NODE</code>. Same list: <code>edgepatch-builder fleet --db DB list \
             --state unaccepted --json</code></p><table id=waiting><tr><th class=l>node</th>\
             <th class=l>key fingerprint</th><th class=l>variant</th><th>reports</th>\
             <th>first seen</th></tr>",
            p.waiting.len()
        );
        for k in &p.waiting {
            let _ = write!(
                h,
                "<tr><td class=l>{}</td><td class=l><code>{}</code></td><td class=l>{}</td>\
                 <td>{}</td><td>{} UTC</td></tr>",
                esc(&k.node_id),
                esc(&k.key_id),
                esc(k.variant.as_deref().unwrap_or("–")),
                k.reports,
                utc(k.first_seen)
            );
        }
        h += "</table>";
    }
    h += "<table id=nodes><tr><th class=l>node</th><th class=l>variant</th><th class=l>labels</th>\
          <th class=l>state</th><th class=l>installed</th><th class=l>last result</th>\
          <th>last seen</th></tr>";
    for n in &p.nodes {
        let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = write!(
            h,
            "<tr><td class=l><a href=\"/nodes/{}\">{}</a></td><td class=l>{}</td>\
             <td class=l>{}</td><td class=\"l s-{}\">{}</td><td class=l>{}</td>\
             <td class=reason title=\"{}\">{}</td><td title=\"{} UTC\">{}</td></tr>",
            enc(&n.node_id),
            esc(&n.node_id),
            esc(&n.variant),
            esc(&labels.join(" ")),
            esc(&n.state),
            esc(&n.state),
            esc(n.installed_cycle.as_deref().unwrap_or("–")),
            esc(n.last_reason.as_deref().unwrap_or("")),
            esc(&last_result(n)),
            utc(n.last_seen),
            ago(p.now, n.last_seen),
        );
    }
    h += "</table>";
    let _ = write!(
        h,
        "<p class=muted id=timing>summary query {:.1} ms · <a href=\"/api/v1/nodes\">nodes JSON</a> \
         · <a href=\"/metrics\">metrics</a></p></body></html>",
        p.summary_ms
    );
    h
}

fn last_result(n: &Node) -> String {
    match n.last_reason.as_deref() {
        Some(r) if !r.is_empty() => format!("{}: {r}", n.last_state),
        _ => n.last_state.clone(),
    }
}

/// Cumulative share of nodes done over time, as an inline SVG step line.
pub fn plot(done: &[i64], total: u64, first_seen: Option<i64>, now: i64) -> String {
    let (w, ht, ml, mr, mt, mb) = (820.0, 240.0, 48.0, 16.0, 10.0, 30.0);
    let pw = w - ml - mr;
    let ph = ht - mt - mb;
    let mut s = format!(
        "<svg id=plot xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{ht}\" \
         viewBox=\"0 0 {w} {ht}\" style=\"background:#fff;border:1px solid #ddd\">"
    );
    for i in 0..=4 {
        let y = mt + ph - ph * f64::from(i) / 4.0;
        let _ = write!(
            s,
            "<line x1=\"{ml}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
             <text x=\"{}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\" fill=\"#777\">{}%</text>",
            ml + pw,
            ml - 6.0,
            y + 4.0,
            i * 25
        );
    }
    if done.is_empty() || total == 0 {
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" font-size=\"13\" text-anchor=\"middle\" fill=\"#777\">\
             no node has finished this cycle yet</text></svg>",
            ml + pw / 2.0,
            mt + ph / 2.0
        );
        return s;
    }
    // Every time here is the center's, but stay total for any i64: no overflow, x0 < x1.
    let x0 = first_seen.unwrap_or(done[0]).min(done[0]);
    let x1 = done[done.len() - 1]
        .min(now)
        .max(x0.saturating_add(1))
        .max(x0);
    let span = (x1 as f64 - x0 as f64).max(1.0);
    let x = |t: i64| ml + pw * ((t.max(x0).min(x1) as f64 - x0 as f64) / span).clamp(0.0, 1.0);
    let y = |n: usize| mt + ph - ph * (n as f64 / total as f64).min(1.0);
    // At most ~400 steps: sample evenly, always keep the last.
    let step = done.len().div_ceil(400).max(1);
    let mut pts = vec![format!("{:.1},{:.1}", x(x0), y(0))];
    let mut prev_y = y(0);
    for (i, t) in done.iter().enumerate() {
        if (i + 1) % step != 0 && i + 1 != done.len() {
            continue;
        }
        let (px, py) = (x(*t), y(i + 1));
        pts.push(format!("{px:.1},{prev_y:.1}"));
        pts.push(format!("{px:.1},{py:.1}"));
        prev_y = py;
    }
    let _ = write!(
        s,
        "<polyline fill=\"none\" stroke=\"#1a7f37\" stroke-width=\"2\" points=\"{}\"/>",
        pts.join(" ")
    );
    let _ = write!(
        s,
        "<text x=\"{ml}\" y=\"{}\" font-size=\"11\" fill=\"#777\">{}</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"end\" fill=\"#777\">{}</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"end\" fill=\"#1a7f37\">{} of {} done</text>",
        ht - 8.0,
        utc(x0),
        ml + pw,
        ht - 8.0,
        utc(x1),
        ml + pw - 4.0,
        mt + 14.0,
        done.len(),
        total
    );
    s + "</svg>"
}

fn history_table(h: &mut String, id: &str, history: &[HistoryRow]) {
    let _ = write!(
        h,
        "<table id={id}><tr><th class=l>received (UTC)</th>\
         <th class=l>node clock</th><th>report</th>\
         <th class=l>cycle</th><th>seq</th><th class=l>command</th><th>exit</th>\
         <th class=l>state</th><th class=l>reason</th><th class=l>timings ms</th>\
         <th class=l>via</th><th>dropped</th><th class=l>key</th></tr>"
    );
    for r in history {
        let st = r.state.as_deref().unwrap_or("–");
        let _ = write!(
            h,
            "<tr><td class=l>{}</td><td class=l>{}</td><td>{}{}</td><td class=l>{}</td>\
             <td>{}</td><td class=l>{}</td>\
             <td>{} {}</td><td class=\"l s-{st}\">{st}</td><td class=reason title=\"{}\">{}</td>\
             <td class=l>{}</td><td class=l>{}</td><td>{}</td><td class=l>{}</td></tr>",
            utc(r.received),
            utc(r.node_time),
            r.report_seq,
            if r.counted { "" } else { " (not counted)" },
            esc(r.cycle.as_deref().unwrap_or("–")),
            r.sequence.map_or("–".into(), |s| s.to_string()),
            esc(&r.command),
            r.exit_code,
            esc(&r.result),
            esc(&r.reason),
            esc(&r.reason),
            esc(&r.timings),
            esc(&r.source),
            r.dropped_before,
            esc(&r.key_id),
        );
    }
    *h += "</table>";
}

pub fn render_node(
    node: &Node,
    status: Option<&str>,
    history: &[HistoryRow],
    pending: &[HistoryRow],
    now: i64,
) -> String {
    let mut h = head(&format!("edgepatch node {}", node.node_id));
    let labels: Vec<String> = node
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = write!(
        h,
        "<p><a href=\"/\">← fleet</a></p><h1>node {}</h1><dl>\
         <dt>state</dt><dd class=s-{}>{}</dd><dt>variant</dt><dd>{}</dd>\
         <dt>labels</dt><dd>{}</dd><dt>installed</dt><dd>{} (sequence {})</dd>\
         <dt>last seen</dt><dd>{} UTC ({})</dd><dt>first seen</dt><dd>{} UTC</dd>\
         <dt>agent</dt><dd>{}</dd><dt>node clock</dt><dd>{} UTC (shown, not trusted)</dd></dl>",
        esc(&node.node_id),
        esc(&node.state),
        esc(&node.state),
        esc(&node.variant),
        esc(&labels.join(" ")),
        esc(node.installed_cycle.as_deref().unwrap_or("–")),
        node.installed_sequence
            .map_or("–".into(), |s| s.to_string()),
        utc(node.last_seen),
        ago(now, node.last_seen),
        utc(node.first_seen),
        esc(node.agent_version.as_deref().unwrap_or("–")),
        node.node_time.map_or("–".into(), utc),
    );
    let _ = write!(h, "<h2>History ({} newest reports)</h2>", history.len());
    history_table(&mut h, "history", history);
    if !pending.is_empty() {
        let _ = write!(
            h,
            "<h2>Reports under keys not accepted for this id ({} newest, at most {})</h2>\
             <p class=muted>Signed by another key than the node's accepted one (a reimaged node \
             or an impostor): stored, never counted.</p>",
            pending.len(),
            super::PENDING_SHOWN
        );
        history_table(&mut h, "unaccepted", pending);
    }
    if let Some(s) = status {
        let _ = write!(
            h,
            "<h2>status.json (last USB export)</h2><pre>{}</pre>",
            esc(s)
        );
    }
    h + "</body></html>"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_escaping() {
        assert_eq!(utc(0), "1970-01-01 00:00");
        assert_eq!(utc(1_709_210_096), "2024-02-29 12:34");
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(enc("role=till a/b"), "role%3Dtill%20a%2Fb");
    }

    #[test]
    fn plot_has_points_and_survives_empty() {
        assert!(plot(&[], 10, None, 100).contains("no node has finished"));
        let s = plot(&[100, 200, 300], 4, Some(50), 1000);
        assert!(s.contains("<polyline") && s.contains("3 of 4 done"));
        // Whatever times are stored, the arithmetic holds (issue 17: i64::MAX crashed it).
        for (d, first, now) in [
            (vec![i64::MAX], Some(0), 0),
            (vec![i64::MIN, i64::MAX], None, i64::MAX),
            (vec![5, 1], Some(i64::MAX), i64::MIN),
        ] {
            assert!(plot(&d, 1, first, now).contains("<polyline"));
        }
        assert_eq!(utc(i64::MAX), "out-of-range");
        assert_eq!(ago(i64::MIN, i64::MAX), "0 s ago");
        let many: Vec<i64> = (0..10_000).collect();
        assert!(plot(&many, 10_000, None, 20_000).len() < 40_000);
    }
}
