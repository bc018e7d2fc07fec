//! OpenAPI schemas of the wire types whose JSON is written by hand (the
//! derived ones are on the types themselves), for the server's
//! `GET /openapi.json`. Only with the `openapi` feature.

use utoipa::PartialSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};

use crate::change::FieldChange;
use crate::timestamp::Timestamp;

/// `fields` of an update: field name → [`FieldChange`] (inline: a hand-made
/// schema cannot be composed into a map by the derive).
pub(crate) fn field_changes() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "Update: the changed fields by name, each with its timestamp.",
        ))
        .additional_properties(Some(FieldChange::schema()))
        .build()
        .into()
}

impl PartialSchema for FieldChange {
    fn schema() -> RefOr<Schema> {
        let any = || ObjectBuilder::new().schema_type(SchemaType::AnyValue);
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "The new value of one field and when it was written. Devices send the \
                 timestamp as `at` or `updatedAt` (one is required; `at` wins when they \
                 differ); the server sends both. Timestamps are compared as strings, \
                 so they are kept byte for byte.",
            ))
            .property(
                "value",
                any().description(Some("The field's value, any JSON.")),
            )
            .required("value")
            .property("updatedAt", Timestamp::schema())
            .property("at", Timestamp::schema())
            .property(
                "actor",
                any().description(Some(
                    "Who wrote this field, when it differs from the change's actor (opaque).",
                )),
            )
            .build()
            .into()
    }
}
