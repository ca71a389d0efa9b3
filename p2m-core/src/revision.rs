//! Xen revisions as sets of named switches, for every modelled Xen line.
//!
//! Every behaviour that differs between the Xen revisions of one line is one field of
//! that line's switch struct (declared with [`switches!`]); a named [`Revision`] is a
//! line plus a set of values. The line is chosen with the revision: `--revision
//! committed` runs the 4.6 line, and each line has one *reference* revision, clean by
//! construction of the harness ([`Revision::reference`]), against which `blame` and
//! `--assume-fixed` read switch values.

use std::fmt;

/// Declares a line's switch struct: one `pub` field per Xen behaviour, each with a doc
/// comment naming the Xen function and commit. Generates [`NAMES`](Self::NAMES),
/// `with_switch_from`, `differing` and a `name=value` [`Display`](fmt::Display).
#[macro_export]
macro_rules! switches {
    ($(#[$m:meta])* pub struct $name:ident { $( $(#[$fm:meta])* pub $f:ident : $t:ty ),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        pub struct $name { $( $(#[$fm])* pub $f: $t ),* }

        impl $name {
            /// Names of the switches, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($f)),*];

            /// `self` with the switch `name` taken from `from`; `None` for an unknown name.
            pub fn with_switch_from(mut self, name: &str, from: &Self) -> Option<Self> {
                match name {
                    $( stringify!($f) => self.$f = from.$f, )*
                    _ => return None,
                }
                Some(self)
            }

            /// Names of the switches whose values differ between `self` and `other`.
            pub fn differing(&self, other: &Self) -> Vec<&'static str> {
                let mut v = Vec::new();
                $( if self.$f != other.$f { v.push(stringify!($f)); } )*
                v
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                let mut first = true;
                $(
                    if !first { f.write_str(" ")?; }
                    first = false;
                    write!(f, "{}={:?}", stringify!($f), self.$f)?;
                )*
                let _ = first;
                Ok(())
            }
        }
    };
}

/// A modelled line of Xen.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Line {
    /// Xen 4.6 (2015): [`crate::xen46`].
    Xen46,
    /// Xen master at `c447b7308b` (2026): [`crate::master`].
    Master,
}

impl Line {
    /// Every line, oldest first.
    pub const ALL: &'static [Line] = &[Line::Xen46, Line::Master];

    /// Name used in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Line::Xen46 => "xen-4.6",
            Line::Master => "xen-master",
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a revision stands for.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum RevisionKind {
    /// A state of Xen's history (a commit, a posted patch, a shipped release).
    History,
    /// The line's reference: every hole known to the harness closed (4.6 `fixed`).
    Reference,
    /// Test-only: a bug planted into the reference to measure the harness. Not Xen.
    Planted,
    /// Undoes a change that only ever added work (extra flushes or updates): the oracle
    /// must stay silent.
    NegativeControl,
    /// Not Xen: the line's reference with every hole this harness found in it closed by a
    /// proposed fix (the master line's `master-fixed`); `--assume-fixed` reads from it.
    Proposed,
}

impl RevisionKind {
    /// Short name for listings.
    pub fn name(self) -> &'static str {
        match self {
            RevisionKind::History => "history",
            RevisionKind::Reference => "reference",
            RevisionKind::Planted => "planted (test-only, not Xen)",
            RevisionKind::NegativeControl => "negative control",
            RevisionKind::Proposed => "proposed fixes (not Xen)",
        }
    }
}

/// The switch values of one revision, per line.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Switches {
    /// A Xen 4.6 revision.
    Xen46(crate::xen46::revision::Switches),
    /// A Xen master revision.
    Master(crate::master::revision::Switches),
}

impl Switches {
    /// The line these switches belong to.
    pub fn line(&self) -> Line {
        match self {
            Switches::Xen46(_) => Line::Xen46,
            Switches::Master(_) => Line::Master,
        }
    }

    /// Names of this line's switches, in declaration order.
    pub fn names(&self) -> &'static [&'static str] {
        match self {
            Switches::Xen46(_) => crate::xen46::revision::Switches::NAMES,
            Switches::Master(_) => crate::master::revision::Switches::NAMES,
        }
    }

    /// `self` with the switch `name` taken from `from`; `None` for an unknown name or
    /// switches of another line.
    pub fn with_switch_from(&self, name: &str, from: &Switches) -> Option<Switches> {
        match (self, from) {
            (Switches::Xen46(a), Switches::Xen46(b)) => {
                a.with_switch_from(name, b).map(Switches::Xen46)
            }
            (Switches::Master(a), Switches::Master(b)) => {
                a.with_switch_from(name, b).map(Switches::Master)
            }
            _ => None,
        }
    }

    /// Names of the switches whose values differ (all of them across lines).
    pub fn differing(&self, other: &Switches) -> Vec<&'static str> {
        match (self, other) {
            (Switches::Xen46(a), Switches::Xen46(b)) => a.differing(b),
            (Switches::Master(a), Switches::Master(b)) => a.differing(b),
            _ => self.names().to_vec(),
        }
    }
}

impl fmt::Display for Switches {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Switches::Xen46(s) => s.fmt(f),
            Switches::Master(s) => s.fmt(f),
        }
    }
}

/// A named set of switch values of one line.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Revision {
    /// Name used on the command line and in reports (unique over all lines).
    pub name: &'static str,
    /// One-line description.
    pub summary: &'static str,
    /// What it stands for.
    pub kind: RevisionKind,
    /// The switch values (which also give the line).
    pub switches: Switches,
}

impl Revision {
    /// Every revision of every line, line by line, oldest first.
    pub fn all() -> impl Iterator<Item = &'static Revision> {
        crate::xen46::revision::REVISIONS
            .iter()
            .chain(crate::master::revision::REVISIONS)
    }
    /// Looks a revision up by name.
    pub fn by_name(name: &str) -> Option<Revision> {
        Revision::all().copied().find(|r| r.name == name)
    }
    /// Names of all revisions, for error messages.
    pub fn names() -> Vec<&'static str> {
        Revision::all().map(|r| r.name).collect()
    }
    /// The line this revision belongs to.
    pub fn line(&self) -> Line {
        self.switches.line()
    }
    /// The reference revision of `line`: clean by construction, the values `blame` and
    /// `--assume-fixed` take switches from.
    pub fn reference(line: Line) -> Revision {
        Revision::all()
            .copied()
            .find(|r| r.line() == line && r.kind == RevisionKind::Reference)
            .expect("every line has a reference revision")
    }
    /// The 4.6 line's `fixed` (the default revision of every command).
    pub fn fixed() -> Revision {
        Revision::reference(Line::Xen46)
    }
    /// The revision whose switch values close every hole known in `line`: the 4.6 line's
    /// reference `fixed`; on the master line, whose reference is Xen itself,
    /// `master-fixed` (the harness's proposed fixes).
    pub fn fixed_for(line: Line) -> Revision {
        Revision::all()
            .copied()
            .find(|r| r.line() == line && r.kind == RevisionKind::Proposed)
            .unwrap_or_else(|| Revision::reference(line))
    }
    /// `self` with each named switch set to its value in [`Revision::fixed_for`] its line
    /// ("assume this hole is closed"); an unknown name is a one-line error.
    pub fn assume_fixed(mut self, names: &[String]) -> Result<Revision, String> {
        let reference = Revision::fixed_for(self.line()).switches;
        for n in names {
            self.switches = self
                .switches
                .with_switch_from(n, &reference)
                .ok_or_else(|| {
                    format!(
                        "unknown switch '{n}' for line {} (known: {})",
                        self.line(),
                        self.switches.names().join(", ")
                    )
                })?;
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_line_has_one_reference() {
        let names = Revision::names();
        for (i, n) in names.iter().enumerate() {
            assert!(!names[i + 1..].contains(n), "duplicate {n}");
        }
        for &line in Line::ALL {
            let refs = Revision::all()
                .filter(|r| r.line() == line && r.kind == RevisionKind::Reference)
                .count();
            assert_eq!(refs, 1, "{line}");
        }
        assert!(Revision::by_name("nope").is_none());
    }

    #[test]
    fn assume_fixed_takes_reference_values() {
        let pre = Revision::by_name("xen-4.6-pre").unwrap();
        let all: Vec<String> = pre.switches.names().iter().map(|s| s.to_string()).collect();
        assert_eq!(
            pre.assume_fixed(&all).unwrap().switches,
            Revision::fixed().switches
        );
        assert!(pre.assume_fixed(&["nope".into()]).is_err());
    }
}
