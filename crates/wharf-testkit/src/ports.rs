//! Ports for programs that must be told a number before they start. Code of our own binds
//! port 0 instead and reads the address back; these are for everything else. Another process
//! may take such a port before the program binds it, so callers check that the program they
//! started is the one answering (see [`crate::pebble::Pebble::start`]).

/// A TCP port of 127.0.0.1 that was free a moment ago (bind 0, read, release).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port of 127.0.0.1 free for both UDP and TCP (a DNS server listens on both).
pub fn free_udp_port() -> u16 {
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = t.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}
