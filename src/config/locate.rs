//! Find the line of a key path (`tenants.acme.stable`) in YAML text.
//!
//! serde_yaml reports lines for syntax and type errors, but a rule broken
//! across fields (an unknown pool name, an overlapping host) is found after
//! deserialisation, when spans are gone. Rather than pull in a second YAML
//! parser for spans, we walk the block structure by indentation, which is
//! what config files written by people and by GitOps tools use. Flow
//! mappings (`v17: { workers: [...] }`) resolve to the line of the mapping.
//! The answer is a hint for the reader; `None` means "could not tell".

/// 1-based line of `path` (segments joined by `.`, list items as `key[n]`).
pub(super) fn line_of(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut start = 0usize; // first line to search
    let mut end = lines.len(); // one past the last line to search
    let mut parent_indent: Option<usize> = None;
    let mut found: Option<usize> = None;

    for segment in split_path(path) {
        let (key, index) = split_index(&segment);
        let Some(at) = find_key(&lines[start..end], key, parent_indent) else {
            // Maybe a flow mapping on the parent's line.
            return found.map(|i| i + 1).or_else(|| find_anywhere(&lines, key));
        };
        let at = start + at;
        found = Some(at);
        let indent = indent_of(lines[at]);
        let block_end = block_end(&lines, at, indent);
        start = at + 1;
        end = block_end;
        parent_indent = Some(indent);
        if let Some(n) = index {
            if let Some(item) = nth_item(&lines[start..end], n) {
                found = Some(start + item);
                let item_indent = indent_of(lines[start + item]);
                let item_end = block_end_items(&lines, start + item, item_indent);
                start += item;
                end = item_end;
                parent_indent = Some(item_indent);
            }
        }
    }
    found.map(|i| i + 1)
}

/// Split `a.b[1].c` into segments, keeping dots inside quotes (host names) whole.
fn split_path(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in path.chars() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn split_index(segment: &str) -> (&str, Option<usize>) {
    if let Some(open) = segment.find('[') {
        let n = segment[open + 1..].trim_end_matches(']').parse().ok();
        (&segment[..open], n)
    } else {
        (segment, None)
    }
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn is_content(line: &str) -> bool {
    let t = line.trim_start();
    !t.is_empty() && !t.starts_with('#')
}

fn key_of(line: &str) -> Option<&str> {
    let t = line.trim_start().trim_start_matches("- ");
    let colon = t.find(':')?;
    Some(t[..colon].trim().trim_matches(|c| c == '"' || c == '\''))
}

fn find_key(lines: &[&str], key: &str, parent_indent: Option<usize>) -> Option<usize> {
    let mut child_indent = None;
    for (i, line) in lines.iter().enumerate() {
        if !is_content(line) {
            continue;
        }
        let indent = indent_of(line);
        if let Some(p) = parent_indent {
            if indent <= p {
                return None;
            }
        }
        let direct = *child_indent.get_or_insert(indent);
        if indent == direct && key_of(line) == Some(key) {
            return Some(i);
        }
    }
    None
}

fn find_anywhere(lines: &[&str], key: &str) -> Option<usize> {
    let pat = format!("{key}:");
    lines
        .iter()
        .position(|l| is_content(l) && l.contains(&pat))
        .map(|i| i + 1)
}

fn block_end(lines: &[&str], at: usize, indent: usize) -> usize {
    lines[at + 1..]
        .iter()
        .position(|l| is_content(l) && indent_of(l) <= indent && !l.trim_start().starts_with("- "))
        .map_or(lines.len(), |p| at + 1 + p)
}

fn block_end_items(lines: &[&str], at: usize, indent: usize) -> usize {
    lines[at + 1..]
        .iter()
        .position(|l| is_content(l) && indent_of(l) <= indent)
        .map_or(lines.len(), |p| at + 1 + p)
}

fn nth_item(lines: &[&str], n: usize) -> Option<usize> {
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("- ") || l.trim() == "-")
        .nth(n)
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
listen: \"127.0.0.1:8080\"
pools:
  v17: { workers: [\"127.0.0.1:1\"] }
  v18:
    workers:
      - \"127.0.0.1:2\"
      - \"bad\"
tenants:
  acme:
    hosts: [\"a.example.com\"]
    stable: v17
  beta:
    # comment
    stable: v19
";

    #[test]
    fn finds_nested_keys_by_indentation() {
        assert_eq!(line_of(TEXT, "listen"), Some(1));
        assert_eq!(line_of(TEXT, "tenants.acme.stable"), Some(11));
        assert_eq!(line_of(TEXT, "tenants.beta.stable"), Some(14));
        assert_eq!(line_of(TEXT, "pools.v18.workers[1]"), Some(7));
    }

    #[test]
    fn flow_mappings_resolve_to_their_line() {
        assert_eq!(line_of(TEXT, "pools.v17.workers"), Some(3));
    }
}
