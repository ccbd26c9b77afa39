//! `GET /v1/openapi.json`: an OpenAPI 3 description of every route in [`super::ROUTES`].

use axum::Json;
use serde_json::{Value, json};

pub fn spec() -> Value {
    let shape_params = json!([
        {"name": "table", "in": "query", "required": true, "schema": {"type": "string"}, "description": "table or schema.table; quote names with capitals"},
        {"name": "offset", "in": "query", "required": true, "schema": {"type": "string"}, "description": "-1, now, or an electric-offset"},
        {"name": "handle", "in": "query", "schema": {"type": "string"}, "description": "required unless offset is -1 or now"},
        {"name": "live", "in": "query", "schema": {"type": "boolean"}},
        {"name": "live_sse", "in": "query", "schema": {"type": "boolean"}},
        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
        {"name": "where", "in": "query", "schema": {"type": "string"}, "description": "row filter (SQL subset); $n placeholders bind params[n]"},
        {"name": "columns", "in": "query", "schema": {"type": "string"}, "description": "comma-separated column list; must include the primary key"},
        {"name": "replica", "in": "query", "schema": {"type": "string", "enum": ["default", "full"]}},
        {"name": "log", "in": "query", "schema": {"type": "string", "enum": ["full", "changes_only"]}},
        {"name": "params", "in": "query", "style": "deepObject", "schema": {"type": "object"}},
        {"name": "subset__where", "in": "query", "schema": {"type": "string"}, "description": "subset snapshot: a further row filter; any subset__* parameter makes the request a subset snapshot"},
        {"name": "subset__params", "in": "query", "schema": {"type": "string"}, "description": "subset snapshot: JSON object of $n values for subset__where"},
        {"name": "subset__order_by", "in": "query", "schema": {"type": "string"}, "description": "subset snapshot: column [ASC|DESC] [NULLS FIRST|LAST], …"},
        {"name": "subset__limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
        {"name": "subset__offset", "in": "query", "schema": {"type": "integer", "minimum": 0}}
    ]);
    let subset_response = json!({"description": "subset snapshot: {\"metadata\": {xmin, xmax, xip_list, snapshot_mark, database_lsn}, \"data\": [insert messages]}"});
    let error = json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let invalid = json!({"description": "invalid request (Electric's body)", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InvalidRequest"}}}});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "gateway", "version": env!("CARGO_PKG_VERSION"), "description": "Postgres sync gateway; the shape endpoints follow the Electric shape protocol."},
        "paths": {
            "/v1/shape": {
                "get": {
                    "summary": "Read a shape: snapshot chunks, catch-up, long-poll or SSE",
                    "parameters": shape_params,
                    "responses": {
                        "200": {"description": "JSON array of messages (an SSE stream with live_sse; a subset snapshot object with subset__* parameters)"},
                        "304": {"description": "not modified (If-None-Match)"},
                        "400": invalid, "409": {"description": "must-refetch: the handle is gone; electric-handle names the new one"},
                        "503": error
                    }
                },
                "post": {
                    "summary": "Subset snapshot of a shape, the subset in the JSON body",
                    "parameters": shape_params,
                    "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {
                        "where": {"type": "string"}, "params": {"type": "object"}, "order_by": {"type": "string"},
                        "limit": {"type": "integer", "minimum": 1}, "offset": {"type": "integer", "minimum": 0}
                    }}}}},
                    "responses": {"200": subset_response, "400": invalid, "409": {"description": "must-refetch"}, "503": error}
                },
                "delete": {
                    "summary": "Drop a table's shapes (or one, with handle)",
                    "parameters": [{"name": "table", "in": "query", "required": true, "schema": {"type": "string"}}, {"name": "handle", "in": "query", "schema": {"type": "string"}}],
                    "responses": {"202": {"description": "deleted"}, "400": invalid, "404": error}
                }
            },
            "/v1/outbox": {
                "post": {
                    "summary": "Apply a batch of client mutations in one transaction, each at most once",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Batch"}}}},
                    "responses": {
                        "200": {"description": "per-mutation results and the transaction id", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchResult"}}}},
                        "400": invalid, "401": error, "413": error, "503": error
                    }
                }
            },
            "/v1/health": {"get": {"summary": "Electric health check", "responses": {"200": {"description": "active"}, "503": {"description": "starting"}}}},
            "/healthz": {"get": {"summary": "the process is alive", "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "replication connected", "responses": {"200": {"description": "ready"}, "503": error}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (names in the README)", "responses": {"200": {"description": "Prometheus text format"}}}},
            "/v1/openapi.json": {"get": {"summary": "this document", "responses": {"200": {"description": "OpenAPI 3"}}}}
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error", "message"], "properties": {"error": {"type": "string"}, "message": {"type": "string"}}},
            "InvalidRequest": {"type": "object", "required": ["message", "errors"], "properties": {
                "message": {"type": "string", "enum": ["Invalid request"]},
                "errors": {"type": "object", "description": "what is wrong with each parameter", "additionalProperties": {"type": "array", "items": {"type": "string"}}}
            }},
            "Batch": {"type": "object", "required": ["client_id", "mutations"], "properties": {
                "client_id": {"type": "string", "description": "one per local database; with the token's subject it names the ledger row that makes mutations idempotent"},
                "atomic": {"type": "boolean", "description": "all mutations apply or none"},
                "mutations": {"type": "array", "maxItems": crate::outbox::MAX_MUTATIONS, "items": {"type": "object", "required": ["id", "table", "op"], "properties": {
                    "id": {"type": "integer", "minimum": 1, "description": "strictly increasing by one per client; ids at or below the last applied are duplicates, a gap is a 409 out_of_order"}, "table": {"type": "string"},
                    "op": {"type": "string", "enum": ["insert", "update", "upsert", "delete"]},
                    "key": {"type": "object", "description": "primary key columns (update, delete)"},
                    "value": {"type": "object", "description": "columns to write; strings are PostgreSQL text input, JSON for json columns, arrays for array columns"},
                    "base": {"type": "object", "description": "the version the change was made on (reject_stale tables)"}
                }}}
            }},
            "BatchResult": {"type": "object", "required": ["results"], "properties": {
                "txid": {"type": "string", "description": "the transaction id the shape stream shows in headers.txids; absent when nothing committed"},
                "results": {"type": "array", "items": {"type": "object", "required": ["id", "status"], "properties": {
                    "id": {"type": "integer"},
                    "status": {"type": "string", "enum": ["applied", "duplicate", "conflict", "rejected", "aborted"]},
                    "error": {"type": "string"}, "row": {"description": "the server's row on a conflict (null when missing)"},
                    "first": {"type": "object", "description": "for a duplicate of the client's last batch: the first result and its txid"}
                }}}
            }}
        }}
    })
}

pub async fn document() -> Json<Value> {
    Json(spec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_and_nothing_else() {
        let spec = spec();
        let paths = spec["paths"].as_object().unwrap();
        let mut documented: Vec<(String, String)> = paths
            .iter()
            .flat_map(|(p, ops)| ops.as_object().unwrap().keys().map(move |m| (m.clone(), p.clone())))
            .collect();
        let mut routes: Vec<(String, String)> =
            crate::http::ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
        documented.sort();
        routes.sort();
        assert_eq!(documented, routes);
    }
}
