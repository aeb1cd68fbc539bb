package proxy

import (
	"strconv"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// phoneInvite is an INVITE as a softphone sends it (Zoiper-like: instance
// id, many codecs, SRTP offer), about 1.5 KB.
func phoneInvite() []byte {
	sdp := strings.Join([]string{
		"v=0",
		"o=Z 1733312345 1 IN IP4 192.168.1.23",
		"s=Z",
		"c=IN IP4 192.168.1.23",
		"t=0 0",
		"m=audio 8000 RTP/SAVP 106 9 98 111 0 8 97 110 3 101",
		"a=rtpmap:106 opus/48000/2",
		"a=fmtp:106 sprop-maxcapturerate=16000; minptime=20; useinbandfec=1",
		"a=rtpmap:98 telephone-event/48000",
		"a=fmtp:98 0-16",
		"a=rtpmap:111 speex/16000",
		"a=rtpmap:97 iLBC/8000",
		"a=fmtp:97 mode=30",
		"a=rtpmap:110 speex/8000",
		"a=rtpmap:101 telephone-event/8000",
		"a=fmtp:101 0-16",
		"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:9Z1vUq3O0CkS8u3X8ZkJm6pXyP4Q4yKqGqJvJ0aQ",
		"a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:Zp0n7gq9Vf8q3Qb9Lw4Xh6T2eR5yU1iO0pKjHgFd",
		"a=sendrecv",
	}, "\r\n") + "\r\n"
	head := strings.Join([]string{
		"INVITE sip:202@pbx.example.com;transport=UDP SIP/2.0",
		"Via: SIP/2.0/UDP 192.168.1.23:5060;branch=z9hG4bK-524287-1---5bd9ef1c0b2ca9f2;rport",
		"Max-Forwards: 70",
		"Contact: <sip:201@192.168.1.23:5060;transport=UDP>;+sip.instance=\"<urn:uuid:5b4bc3a8-3e33-4b5a-9a52-8a1d3c9c7f21>\"",
		"To: <sip:202@pbx.example.com;transport=UDP>",
		"From: \"Alice Example\"<sip:201@pbx.example.com;transport=UDP>;tag=7f3c2a19",
		"Call-ID: kF3m9QxW2pL8vR4tY7uI1oA5sD6gH0jZ",
		"CSeq: 1 INVITE",
		"Allow: INVITE, ACK, CANCEL, BYE, NOTIFY, REFER, MESSAGE, OPTIONS, INFO, SUBSCRIBE",
		"Content-Type: application/sdp",
		"Supported: replaces, norefersub, extended-refer, timer, outbound, path, X-cisco-serviceuri",
		"User-Agent: Z 5.6.1 v2.10.20.2",
		"Allow-Events: presence, kpml, talk, as-feature-event",
		"Session-Expires: 1800",
		"Min-SE: 90",
		"Content-Length: " + strconv.Itoa(len(sdp)),
	}, "\r\n") + "\r\n\r\n"
	return []byte(head + sdp)
}

// BenchmarkIntake is what every UDP request costs at the door before
// routing: the read filter, sipgo's parse, and sanity.
func BenchmarkIntake(b *testing.B) {
	p := sanityProxy(b)
	data := phoneInvite()
	parser := sip.NewParser()
	props := sip.TransportReadProps{Transport: "UDP"}
	if unparsableSuspect(data) {
		b.Fatal("a phone's INVITE is suspect: the filter would parse it twice")
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		in, _ := p.sanityFilter(props, data)
		msg, err := parser.ParseSIP(in)
		if err != nil {
			b.Fatal(err)
		}
		req := msg.(*sip.Request)
		req.SetTransport("UDP")
		req.SetSource(phoneIP + ":5060")
		if code, reason, _, _ := p.sanity(req); code != 0 {
			b.Fatal(code, reason)
		}
	}
}

// BenchmarkSanity is sanity alone on a parsed phone INVITE.
func BenchmarkSanity(b *testing.B) {
	p := sanityProxy(b)
	msg, err := sip.ParseMessage(phoneInvite())
	if err != nil {
		b.Fatal(err)
	}
	req := msg.(*sip.Request)
	req.SetTransport("UDP")
	req.SetSource(phoneIP + ":5060")
	b.ReportAllocs()
	for b.Loop() {
		if code, reason, _, _ := p.sanity(req); code != 0 {
			b.Fatal(code, reason)
		}
	}
}

// BenchmarkReadFilter is sanityFilter alone on a phone's INVITE: the part
// of the intake hapbx adds before sipgo's parse.
func BenchmarkReadFilter(b *testing.B) {
	p := sanityProxy(b)
	data := phoneInvite()
	props := sip.TransportReadProps{Transport: "UDP"}
	b.ReportAllocs()
	for b.Loop() {
		if out, _ := p.sanityFilter(props, data); len(out) != len(data) {
			b.Fatal("filter changed a phone's INVITE")
		}
	}
}
