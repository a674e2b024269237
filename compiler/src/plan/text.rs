//! The text form of a transaction: one operation per line in `nft -f` syntax, for logs and
//! tests. Declarations, rules and elements are cut from what `render` prints for a scratch
//! table holding just that object, so the two text forms cannot drift apart.

use std::fmt::{self, Display, Formatter};

use super::{Object, Op, Transaction, Verb};
use crate::ir::{Element, Ruleset, Set, Table};
use crate::render::{render_rule, render_ruleset, sanitize_comment};

impl Display for Transaction {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        for op in &self.ops {
            writeln!(f, "{op}")?;
        }
        Ok(())
    }
}

impl Display for Op {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let verb = self.verb.keyword();
        let t = format!("{} {}", self.family, self.table);
        match (&self.object, self.verb) {
            (Object::Table { comment: Some(c) }, Verb::Add) => {
                write!(
                    f,
                    "add table {t} {{ comment \"{}\"; }}",
                    sanitize_comment(c)
                )
            }
            (Object::Table { .. }, _) => write!(f, "{verb} table {t}"),
            (Object::Chain(h), Verb::Add) => {
                let line = self.scratch(|table| {
                    table.chains.insert(h.name.clone(), h.to_chain());
                });
                f.write_str(
                    line.lines()
                        .find(|l| l.starts_with("add chain "))
                        .unwrap_or(""),
                )
            }
            (Object::Chain(h), _) => write!(f, "{verb} chain {t} {}", h.name),
            (Object::Set(h), Verb::Add) => {
                let line = self.scratch(|table| {
                    table.sets.insert(h.name.clone(), h.to_set());
                });
                let found = line
                    .lines()
                    .find(|l| l.starts_with("add set ") || l.starts_with("add map "));
                f.write_str(found.unwrap_or(""))
            }
            (Object::Set(h), _) => {
                let kind = if h.is_map() { "map" } else { "set" };
                write!(f, "{verb} {kind} {t} {}", h.name)
            }
            (Object::Rule { chain, rule }, _) => {
                write!(f, "{verb} rule {t} {chain} {}", render_rule(rule))
            }
            (Object::Elements { set, elements }, _) => {
                // A delete names keys only.
                let elements: Vec<Element> = match self.verb {
                    Verb::Delete => elements
                        .iter()
                        .map(|e| Element {
                            key: e.key.clone(),
                            data: None,
                            comment: None,
                        })
                        .collect(),
                    _ => elements.clone(),
                };
                write!(
                    f,
                    "{verb} element {t} {set} {{ {} }}",
                    self.elements_text(set, elements)
                )
            }
        }
    }
}

impl Op {
    /// Renders a scratch table of this op's family and name after `fill` put one object in it.
    fn scratch(&self, fill: impl FnOnce(&mut Table)) -> String {
        let mut table = Table::new(self.family, self.table.clone());
        fill(&mut table);
        render_ruleset(&Ruleset {
            tables: vec![table],
        })
    }

    /// `e1, e2, …` as between the braces of `add element`. The scratch set has no key types,
    /// which only changes how a `mark` key would print (decimal instead of hex).
    fn elements_text(&self, set: &str, elements: Vec<Element>) -> String {
        let script = self.scratch(|table| {
            let mut scratch = Set::new(set, Vec::new(), Vec::new());
            scratch.elements = elements;
            table.sets.insert(set.to_string(), scratch);
        });
        let prefix = format!("add element {} {} {set} {{ ", self.family, self.table);
        script
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix)?.strip_suffix(" }"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}
