//! A published table as PostgreSQL describes it: columns in replication order, types, key.

use std::fmt;

use crate::value::SqlType;

/// A schema-qualified table name, as PostgreSQL stores it (no quoting, exact case).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Self {
        TableName { schema: schema.into(), name: name.into() }
    }

    /// `"schema"."name"` with identifier quoting, safe to splice into SQL.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// Parses the protocol's `table` parameter: `name` or `schema.name`; unquoted parts fold to
    /// lower case, double-quoted parts keep case and may contain dots.
    pub fn parse(s: &str) -> Result<TableName, String> {
        if s.contains('\0') {
            return Err("a table name cannot contain a NUL character".into());
        }
        let parts = split_identifiers(s, '.')?;
        match parts.as_slice() {
            [name] => Ok(TableName::new("public", name.clone())),
            [schema, name] => Ok(TableName::new(schema.clone(), name.clone())),
            _ => Err(format!("Invalid relation identifier, too many delimiters: {s}")),
        }
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Double-quotes an identifier, doubling embedded quotes.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Splits `a.b` / `"A"."b.c"` style lists on `sep`, folding unquoted parts to lower case.
pub fn split_identifiers(s: &str, sep: char) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut part = String::new();
        let mut quoted = false;
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        if chars.peek() == Some(&'"') {
            quoted = true;
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(format!("Unterminated quoted identifier in: {s}")),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    Some('"') => break,
                    Some(c) => part.push(c),
                }
            }
            while chars.peek() == Some(&' ') {
                chars.next();
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == sep {
                    break;
                }
                part.push(c);
                chars.next();
            }
            part = part.trim().to_lowercase();
        }
        if part.is_empty() {
            return Err("Invalid zero-length delimited identifier".into());
        }
        if !quoted && !part.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            return Err(format!("Invalid identifier: {part} (quote names with special characters)"));
        }
        out.push(part);
        match chars.next() {
            None => return Ok(out),
            Some(c) if c == sep => {}
            Some(c) => return Err(format!("Unexpected character {c:?} in: {s}")),
        }
    }
}

/// One column of a table.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    /// `pg_type.typname` of the column, or of its element type for arrays.
    pub type_name: String,
    /// The full SQL type (`format_type`), e.g. `character varying(20)[]`, for casts.
    #[serde(default)]
    pub type_sql: String,
    /// Array dimensions; 0 for scalars.
    pub dims: u32,
    pub type_mod: i32,
    pub not_null: bool,
    /// Position in the primary key, if part of it.
    pub pk_index: Option<u32>,
}

impl Column {
    /// A nullable scalar column of type `type_name` (`pk_index`: its place in the primary
    /// key), as tests and tools describe tables without a catalog.
    pub fn scalar(name: &str, type_name: &str, pk_index: Option<u32>) -> Column {
        Column {
            name: name.into(),
            type_oid: 0,
            type_name: type_name.into(),
            type_sql: type_name.into(),
            dims: 0,
            type_mod: -1,
            not_null: false,
            pk_index,
        }
    }

    pub fn sql_type(&self) -> SqlType {
        SqlType::from_pg_name(&self.type_name, self.dims)
    }
}

/// A table's shape in the replication stream: columns in attnum order without dropped or
/// generated columns (the order pgoutput sends tuples in).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableSchema {
    pub oid: u32,
    pub name: TableName,
    pub columns: Vec<Column>,
    /// `REPLICA IDENTITY FULL`: updates and deletes carry the whole old row.
    pub replica_identity_full: bool,
}

impl TableSchema {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// Indexes of the key columns in key order; every column when the table has no primary key.
    pub fn key_columns(&self) -> Vec<usize> {
        let mut pk: Vec<(u32, usize)> =
            self.columns.iter().enumerate().filter_map(|(i, c)| c.pk_index.map(|p| (p, i))).collect();
        if pk.is_empty() {
            return (0..self.columns.len()).collect();
        }
        pk.sort();
        pk.into_iter().map(|(_, i)| i).collect()
    }

    pub fn has_primary_key(&self) -> bool {
        self.columns.iter().any(|c| c.pk_index.is_some())
    }

    /// Whether the replication stream's column list still matches this schema.
    pub fn same_columns(&self, names_and_types: &[(String, u32)]) -> bool {
        self.columns.len() == names_and_types.len()
            && self.columns.iter().zip(names_and_types).all(|(c, (n, t))| &c.name == n && c.type_oid == *t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_parse_with_postgres_folding() {
        assert_eq!(TableName::parse("Foo").unwrap(), TableName::new("public", "foo"));
        assert_eq!(TableName::parse("app.items").unwrap(), TableName::new("app", "items"));
        assert_eq!(TableName::parse(r#""My"."a.b""#).unwrap(), TableName::new("My", "a.b"));
        assert!(TableName::parse("a.b.c").unwrap_err().contains("too many delimiters"));
        assert!(TableName::parse(r#""""#).unwrap_err().contains("zero-length"));
        assert!(TableName::parse("x; drop table y").is_err());
    }

    #[test]
    fn quoting_doubles_quotes() {
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
    }
}
