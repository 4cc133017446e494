//! Line numbers of key paths in the configuration text.

/// 1-based line of a byte offset.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// The line of a key path like `sources[1].window_secs`, or of its nearest existing parent.
pub(super) fn line_of_path(doc: &toml_edit::ImDocument<String>, text: &str, path: &str) -> Option<usize> {
    use toml_edit::{Item, Value};

    #[derive(Clone, Copy)]
    enum Node<'a> {
        Item(&'a Item),
        Value(&'a Value),
        Table(&'a toml_edit::Table),
    }
    fn child<'a>(node: Node<'a>, key: &str) -> Option<Node<'a>> {
        match node {
            Node::Item(Item::Table(t)) | Node::Table(t) => t.get(key).map(Node::Item),
            Node::Item(Item::Value(Value::InlineTable(t))) | Node::Value(Value::InlineTable(t)) => {
                t.get(key).map(Node::Value)
            }
            _ => None,
        }
    }
    fn index(node: Node<'_>, i: usize) -> Option<Node<'_>> {
        match node {
            Node::Item(Item::ArrayOfTables(a)) => a.get(i).map(Node::Table),
            Node::Item(Item::Value(Value::Array(a))) | Node::Value(Value::Array(a)) => a.get(i).map(Node::Value),
            _ => None,
        }
    }
    fn start(node: Node<'_>) -> Option<usize> {
        match node {
            Node::Item(Item::Value(v)) | Node::Value(v) => v.span().map(|s| s.start),
            Node::Item(Item::Table(t)) | Node::Table(t) => t.span().map(|s| s.start),
            Node::Item(Item::ArrayOfTables(a)) => a.span().map(|s| s.start),
            Node::Item(Item::None) => None,
        }
    }
    let mut node = Node::Table(doc.as_table());
    let mut best = None;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, idx) = match part.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some(next) = child(node, key) else { break };
        node = next;
        if let Some(at) = start(node) {
            best = Some(line_of(text, at));
        }
        if let Some(i) = idx {
            let Some(next) = index(node, i) else { break };
            node = next;
            if let Some(at) = start(node) {
                best = Some(line_of(text, at));
            }
        }
    }
    best
}
