"""FHIR R4: resources, REST API, search and the fhir adapter."""
