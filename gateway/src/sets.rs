//! Subquery sets from PostgreSQL (docs/subqueries.md): a set is loaded by one query, in the
//! transaction of the snapshot that first needs it, so set and snapshot agree.

use shapes::subquery_set::SubquerySet;
use shapes::table::quote_ident;
use shapes::where_clause::Subquery;
use tokio_postgres::GenericClient;

use crate::db::DbError;

/// The values `subquery` yields now, as the text PostgreSQL prints for them (what the
/// replication stream sends): the set's keys.
pub async fn load(client: &impl GenericClient, subquery: &Subquery) -> Result<SubquerySet, DbError> {
    // Positional names: a subquery may select one column twice.
    let n = subquery.columns.len();
    let names: Vec<String> = (0..n).map(|i| quote_ident(&format!("c{i}"))).collect();
    let text: Vec<String> = names.iter().map(|c| format!("{c}::text")).collect();
    let sql = format!("SELECT {} FROM ({}) AS yielded({})", text.join(", "), subquery.to_sql(), names.join(", "));
    let rows = client.query(sql.as_str(), &[]).await?;
    Ok(SubquerySet::from_rows(rows.iter().map(|row| (0..n).map(|i| row.get::<_, Option<String>>(i)).collect())))
}
