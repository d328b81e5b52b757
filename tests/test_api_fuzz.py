"""schemathesis over every route of /api/schema/: no 5xx and no response that breaks the
schema (a bounded number of generated cases per operation)."""

import json

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.helpers import client_for

EXAMPLES_PER_OPERATION = 8


def _schema_dict() -> dict:
    # the same document /api/schema/ serves (it needs a token, so it is built here)
    return json.loads(
        json.dumps(SchemaGenerator().get_schema(request=None, public=True), default=str)
    )


schema = schemathesis.openapi.from_dict(_schema_dict())
schema.app = get_wsgi_application()


@pytest.fixture
def token_header(transactional_db, roots):
    client = client_for("admin")
    return {"Authorization": client._credentials["HTTP_AUTHORIZATION"]}


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck)
)
def test_api_never_fails_or_breaks_its_schema(case, token_header):
    case.call_and_validate(
        headers=token_header,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
