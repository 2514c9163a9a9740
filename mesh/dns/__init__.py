"""CoreDNS and kube-dns integration."""
