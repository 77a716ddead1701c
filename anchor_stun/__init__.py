"""anchor_stun: STUN (RFC 8489) codec, credentials, transactions, server and NAT discovery."""
