"""The ward console's HTTP side: the API, its OpenAPI description, the ward page and the staff view."""
