"""OpenAPI post-processing: every operation documents the error shape and the codes it may
answer with (the error handler gives them all one body)."""

ERROR_CODES = {
    "400": "Invalid input.",
    "401": "Missing or wrong credentials.",
    "403": "Your role does not allow this.",
    "404": "Unknown repository, archive, job or page.",
    "405": "Method not allowed.",
    "409": "The repository is busy, mounted, or the object already exists.",
    "415": "Unsupported media type.",
    "422": "borg refused: wrong passphrase, integrity error.",
    "429": "Too many failed sign-in attempts.",
    "502": "borg failed unexpectedly.",
    "507": "Not enough space for the repository.",
}

ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "success": {"type": "boolean"},
        "error": {"type": "string"},
        "message": {"type": "string"},
        "fields": {"type": "object", "additionalProperties": True},
    },
    "required": ["success", "error", "message"],
}


def add_error_responses(result, generator, request, public):
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    reference = {"$ref": "#/components/schemas/Error"}
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            for code, text in ERROR_CODES.items():
                responses.setdefault(
                    code,
                    {"description": text, "content": {"application/json": {"schema": reference}}},
                )
    return result
