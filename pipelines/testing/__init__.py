"""Test builders shipped with the package: small COGs with real-world STAC item schemas, and a
loopback S3 server. Used by terrapipe's own tests and by anyone testing code built on it."""
