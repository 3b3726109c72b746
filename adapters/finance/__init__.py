"""Finance adapters: ISO 20022 XML (``iso20022``) and ISO 8583 card messages (``iso8583``)."""
