"""The room's HTTP side: the REST API and event stream (``app``), its tokens and roles (``auth``),
metrics, the OpenAPI description, the readings history route, the nurse and facilities pages
(``static/``) and the server that listens (``server``)."""
