//! Minimal HTML building for the status page: every value goes through [`escape`], because
//! session ids, pool and upstream names and reload errors are user input.

use std::fmt::Write;

/// `s` safe as HTML text and as a quoted attribute value.
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

/// A table: a header row, then one row per item, every cell escaped.
pub struct Table {
    html: String,
}

impl Table {
    pub fn new(class: &str, headers: &[&str]) -> Table {
        let mut html = format!("<table class=\"{}\"><thead><tr>", escape(class));
        for h in headers {
            let _ = write!(html, "<th>{}</th>", escape(h));
        }
        html.push_str("</tr></thead><tbody>");
        Table { html }
    }

    /// A row of plain cells.
    pub fn row<S: AsRef<str>>(&mut self, cells: &[S]) {
        self.html.push_str("<tr>");
        for c in cells {
            let _ = write!(self.html, "<td>{}</td>", escape(c.as_ref()));
        }
        self.html.push_str("</tr>");
    }

    /// A row of cells each with a CSS class (e.g. a health state to colour).
    pub fn row_classed<S: AsRef<str>>(&mut self, cells: &[(S, &str)]) {
        self.html.push_str("<tr>");
        for (c, class) in cells {
            let _ = write!(
                self.html,
                "<td class=\"{}\">{}</td>",
                escape(class),
                escape(c.as_ref())
            );
        }
        self.html.push_str("</tr>");
    }

    pub fn finish(mut self) -> String {
        self.html.push_str("</tbody></table>");
        self.html
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_values_is_escaped() {
        assert_eq!(
            escape(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        let mut t = Table::new("t", &["<h>"]);
        t.row(&["<img src=x onerror=alert(1)>"]);
        t.row_classed(&[("a", "\"><b")]);
        let html = t.finish();
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("\"><b"), "{html}");
        assert!(html.contains("&lt;h&gt;"));
    }
}
