//! `nft list ruleset` output, normalised for order where the order carries no meaning, and line
//! diffs of listings for failure messages.

/// Element order and chain/set block order normalised: [`sort_blocks`] of [`sort_elements`].
/// `nft list` shows chains and sets in creation order, so a chain added by an incremental
/// transaction comes after the chains that were there before, where a fresh load has it in name
/// order; and some set backends list elements in insertion order. Rules keep their order: within
/// a chain it is the meaning.
pub fn normalized(listing: &str) -> String {
    sort_blocks(&sort_elements(listing))
}

/// Sorts the entries of every `elements = { … }` block. nft prints most sets in its own sorted
/// order, but elements of concatenated interval sets (the pipapo backend) in the kernel's dump
/// order, which is insertion order, and `nft -f` inserts them in an order of its own making (the
/// `add element` lines of one set arrive partly reversed). The element *set* must be equal; its
/// order carries no meaning, so it is compared sorted.
pub fn sort_elements(listing: &str) -> String {
    const OPEN: &str = "elements = { ";
    let mut out = Vec::new();
    let mut block: Vec<String> = Vec::new();
    let mut prefix = String::new();
    let mut in_block = false;
    for line in listing.lines() {
        let rest = if in_block {
            line
        } else {
            let Some(at) = line.find(OPEN) else {
                out.push(line.to_owned());
                continue;
            };
            in_block = true;
            prefix = line[..at + OPEN.len()].to_owned();
            &line[at + OPEN.len()..]
        };
        let entry = rest.trim();
        let (entry, last) = match entry.strip_suffix(" }") {
            Some(entry) => (entry, true),
            None => (entry, false),
        };
        block.push(entry.trim_end_matches(',').to_owned());
        if last {
            block.sort();
            out.push(format!("{prefix}{}", block.join(", ")));
            block.clear();
            in_block = false;
        }
    }
    out.join("\n")
}

/// Sorts the blocks (`\tchain … {` to `\t}`) inside every table of a listing.
pub fn sort_blocks(listing: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut blocks: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    for line in listing.lines() {
        if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
            if line == "\t}" {
                blocks.extend(current.take());
            }
        } else if line.starts_with('\t') && line.ends_with(" {") {
            current = Some(format!("{line}\n"));
        } else {
            // A table's header or closing brace (or a blank line between blocks).
            if line == "}" {
                blocks.sort();
                out.append(&mut blocks);
            }
            if !line.is_empty() {
                out.push(format!("{line}\n"));
            }
        }
    }
    out.concat()
}

/// Lines of `expected` missing from `actual` (`- `) and the other way round (`+ `).
pub fn diff(expected: &str, actual: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let mut out = String::new();
    for line in a.iter().filter(|l| !b.contains(l)) {
        out.push_str(&format!("- {line}\n"));
    }
    for line in b.iter().filter(|l| !a.contains(l)) {
        out.push_str(&format!("+ {line}\n"));
    }
    if out.is_empty() {
        out.push_str("(same lines, different order)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elements_and_blocks_are_sorted_and_rules_are_not() {
        let listing = "table ip t {\n\
                       \tset s {\n\
                       \t\telements = { 10.0.0.2,\n\
                       \t\t\t     10.0.0.3,\n\
                       \t\t\t     10.0.0.1 }\n\
                       \t}\n\
                       \n\
                       \tchain b {\n\
                       \t\taccept\n\
                       \t\tdrop\n\
                       \t}\n\
                       \n\
                       \tchain a {\n\
                       \t}\n\
                       }\n";
        assert_eq!(
            sort_elements(listing).lines().nth(2),
            Some("\t\telements = { 10.0.0.1, 10.0.0.2, 10.0.0.3")
        );
        assert_eq!(
            normalized(listing),
            "table ip t {\n\
             \tchain a {\n\
             \t}\n\
             \tchain b {\n\
             \t\taccept\n\
             \t\tdrop\n\
             \t}\n\
             \tset s {\n\
             \t\telements = { 10.0.0.1, 10.0.0.2, 10.0.0.3\n\
             \t}\n\
             }\n"
        );
    }
}
