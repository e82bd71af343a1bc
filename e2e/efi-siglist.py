#!/usr/bin/env python3
"""Writes an EFI_SIGNATURE_LIST holding one X.509 certificate (UEFI spec 32.4.1), the format
OVMF reads from fw_cfg `etc/edk2/https/cacerts` as the CA list of its HTTPS Boot.
Usage: efi-siglist.py CERT.pem OUT   (the first certificate of the PEM file)
One fixed-layout struct, so written here rather than installing a tool for it."""
import base64
import re
import struct
import sys
import uuid

# EFI_CERT_X509_GUID
X509 = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072").bytes_le
# The owner of the entry: any GUID; this one names the e2e harness.
OWNER = uuid.UUID("c4a1b0e7-2e2e-4c8b-9b1a-636861696e62").bytes_le

pem = open(sys.argv[1]).read()
body = re.search(r"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", pem, re.S)
if not body:
    sys.exit(f"{sys.argv[1]}: no PEM certificate")
der = base64.b64decode("".join(body.group(1).split()))
data = OWNER + der
header = X509 + struct.pack("<III", 16 + 12 + len(data), 0, len(data))
with open(sys.argv[2], "wb") as f:
    f.write(header + data)
