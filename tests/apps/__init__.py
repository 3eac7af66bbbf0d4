"""Application modules imported by the importer and WSGI tests (as ``apps.<module>``)."""
