"""The privacy-utility protocol: resumable steps from synthetic splits to verified, audited releases."""
