//! A decision report: one self-contained HTML page that tells the person concerned (or an auditor)
//! what was decided, how sure the model was, the main factors in words with their chart or heat
//! map, what would have changed the decision, which model and method, why the method can be
//! trusted, and where the record sits in the audit chain. It draws what the handler gathered and
//! recomputes nothing; every text from a record, a manifest or a request is escaped.

use base64::Engine;

/// A factor of a tabular decision, in the order of its weight.
pub struct Factor {
    /// The feature's name.
    pub name: String,
    /// Its plain-language description, from the manifest.
    pub description: Option<String>,
    /// The input's value.
    pub value: Option<f64>,
    /// Its attribution (positive: towards the decision).
    pub attribution: f64,
}

/// A labelled figure (a name, its value, what it means).
pub struct Figure {
    pub name: String,
    pub value: String,
    pub meaning: String,
}

/// Everything a report shows.
pub struct Report {
    /// The decision: the label explained.
    pub decision: String,
    /// Its score (a class probability, or a regression's value).
    pub score: Option<f64>,
    /// Whether the score is a probability (classification) rather than a value (regression).
    pub probability: bool,
    /// Model name, version, sha256, description.
    pub model: String,
    pub version: Option<String>,
    pub sha256: String,
    pub model_description: Option<String>,
    /// Method name and its one-line summary.
    pub method: String,
    pub method_summary: String,
    /// Tabular factors, largest first.
    pub factors: Vec<Factor>,
    /// Sentences about an image's or a text's map.
    pub map_words: Vec<String>,
    /// The chart or heat map, PNG.
    pub picture: Option<Vec<u8>>,
    /// Why there is no picture.
    pub picture_missing: Option<String>,
    /// The counterfactual or rule fragment (`decision_html`), and where it comes from.
    pub counterfactual_html: Option<String>,
    pub counterfactual_note: String,
    /// How sure the model was.
    pub certainty: Vec<Figure>,
    /// The method's recorded faithfulness figures.
    pub faithfulness: Vec<Figure>,
    /// Record id, time, chain position and hashes.
    pub record_id: String,
    pub time: String,
    pub seq: i64,
    pub hash: String,
    pub prev_hash: String,
    /// Other remarks (what the record did not keep).
    pub notes: Vec<String>,
}

fn esc(s: &str) -> String {
    html_escape::encode_text(s).into_owned()
}

/// A figure at most four significant decimals, no trailing zeros.
pub fn short(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    let s = if x != 0.0 && x.abs() < 1e-3 {
        format!("{x:.2e}")
    } else {
        format!("{x:.4}")
    };
    if s.contains('e') {
        return s;
    }
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

const STYLE: &str =
    "body{font-family:sans-serif;max-width:52em;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}\
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}\
table{border-collapse:collapse}td,th{padding:.2em .6em;border-bottom:1px solid #eee;text-align:left}\
.for{color:#c0003c}.against{color:#0063b1}code{font-size:.9em;word-break:break-all}img{max-width:100%}\
.note{color:#555;font-size:.92em}";

/// The report as a whole HTML document (no script; images inline as data URIs).
pub fn report_html(r: &Report) -> String {
    let mut h = String::with_capacity(16 * 1024);
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str(&format!(
        "<title>Decision report: {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        esc(&r.decision)
    ));
    h.push_str(&format!("<h1>Decision: {}</h1>\n", esc(&r.decision)));
    if let Some(score) = r.score {
        let what = if r.probability {
            "The model gave this outcome a probability of"
        } else {
            "The model's value was"
        };
        h.push_str(&format!(
            "<p id=\"score\">{what} <strong>{}</strong>.</p>\n",
            short(score)
        ));
    }

    h.push_str("<h2>The main factors</h2>\n");
    if !r.factors.is_empty() {
        h.push_str("<ol id=\"factors\">\n");
        for f in &r.factors {
            let (class, direction) = if f.attribution >= 0.0 {
                ("for", "pushed towards")
            } else {
                ("against", "pushed away from")
            };
            let value = f.value.map(|v| format!(" = {}", short(v))).unwrap_or_default();
            let described = f
                .description
                .as_deref()
                .map(|d| format!(" ({})", esc(d)))
                .unwrap_or_default();
            h.push_str(&format!(
                "<li><strong>{}</strong>{value}{described} <span class=\"{class}\">{direction} {} by {}</span></li>\n",
                esc(&f.name),
                esc(&r.decision),
                short(f.attribution.abs())
            ));
        }
        h.push_str("</ol>\n");
    }
    for line in &r.map_words {
        h.push_str(&format!("<p>{}</p>\n", esc(line)));
    }
    match (&r.picture, &r.picture_missing) {
        (Some(png), _) => h.push_str(&format!(
            "<p><img id=\"picture\" alt=\"the explanation's chart or heat map\" src=\"data:image/png;base64,{}\"></p>\n",
            base64::engine::general_purpose::STANDARD.encode(png)
        )),
        (None, Some(why)) => h.push_str(&format!("<p class=\"note\">{}</p>\n", esc(why))),
        (None, None) => {}
    }

    h.push_str("<h2>What would have changed the decision</h2>\n");
    if let Some(fragment) = &r.counterfactual_html {
        h.push_str(fragment);
    }
    h.push_str(&format!("<p class=\"note\">{}</p>\n", esc(&r.counterfactual_note)));

    h.push_str("<h2>How sure the model was</h2>\n");
    figures(
        &mut h,
        "certainty",
        &r.certainty,
        "No estimate of the model's uncertainty was recorded with this decision.",
    );

    h.push_str("<h2>The model and the method</h2>\n<table id=\"model\">\n");
    let row = |h: &mut String, name: &str, value: &str| {
        h.push_str(&format!("<tr><th>{name}</th><td>{value}</td></tr>\n"));
    };
    row(&mut h, "Model", &esc(&r.model));
    row(
        &mut h,
        "Version",
        &esc(r
            .version
            .as_deref()
            .unwrap_or("not stated (the manifest names no version)")),
    );
    row(&mut h, "sha256", &format!("<code>{}</code>", esc(&r.sha256)));
    if let Some(d) = &r.model_description {
        row(&mut h, "About", &esc(d));
    }
    row(&mut h, "Method", &esc(&r.method));
    row(&mut h, "How it works", &esc(&r.method_summary));
    h.push_str("</table>\n<p>Why the explanation can be trusted:</p>\n");
    figures(
        &mut h,
        "faithfulness",
        &r.faithfulness,
        "No faithfulness figure was recorded with this explanation (ask for `evaluate` metrics to record some).",
    );

    h.push_str("<h2>The record</h2>\n<table id=\"chain\">\n");
    row(&mut h, "Record", &format!("<code>{}</code>", esc(&r.record_id)));
    row(&mut h, "Time", &esc(&r.time));
    row(&mut h, "Position in the audit chain", &r.seq.to_string());
    row(&mut h, "Hash", &format!("<code>{}</code>", esc(&r.hash)));
    row(&mut h, "Previous hash", &format!("<code>{}</code>", esc(&r.prev_hash)));
    h.push_str(
        "</table>\n<p class=\"note\">Each record's hash covers the previous one's: <code>GET /v1/audit/verify</code> \
         shows whether any record was changed, removed or re-ordered; <code>POST /v1/audit/records/{id}/replay</code> \
         runs this explanation again and compares it.</p>\n",
    );
    for n in &r.notes {
        h.push_str(&format!("<p class=\"note\">{}</p>\n", esc(n)));
    }
    h.push_str("</body>\n</html>\n");
    h
}

fn figures(h: &mut String, id: &str, list: &[Figure], none: &str) {
    if list.is_empty() {
        h.push_str(&format!("<p class=\"note\">{}</p>\n", esc(none)));
        return;
    }
    h.push_str(&format!("<table id=\"{id}\">\n"));
    for f in list {
        h.push_str(&format!(
            "<tr><th>{}</th><td>{}</td><td>{}</td></tr>\n",
            esc(&f.name),
            esc(&f.value),
            esc(&f.meaning)
        ));
    }
    h.push_str("</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            decision: "malignant <b>".into(),
            score: Some(0.93),
            probability: true,
            model: "m".into(),
            version: None,
            sha256: "ab".into(),
            model_description: None,
            method: "kernel-shap".into(),
            method_summary: "s".into(),
            factors: vec![Factor {
                name: "radius".into(),
                description: Some("<script>alert(1)</script>".into()),
                value: Some(14.0),
                attribution: -0.25,
            }],
            map_words: vec![],
            picture: None,
            picture_missing: None,
            counterfactual_html: None,
            counterfactual_note: "none".into(),
            certainty: vec![],
            faithfulness: vec![],
            record_id: "r".into(),
            time: "t".into(),
            seq: 3,
            hash: "h".into(),
            prev_hash: "p".into(),
            notes: vec![],
        }
    }

    #[test]
    fn every_text_is_escaped() {
        let html = report_html(&report());
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("malignant &lt;b&gt;"));
        assert!(html.contains("pushed away from"));
    }

    #[test]
    fn short_figures() {
        assert_eq!(short(0.25), "0.25");
        assert_eq!(short(2.0), "2");
        assert_eq!(short(0.00001234), "1.23e-5");
    }
}
