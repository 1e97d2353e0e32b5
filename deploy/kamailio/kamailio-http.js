// Loaded by kamailio.cfg (app_jsdt, setting PNS_HTTP_JS); called by its route PNS_POST.
//
// POSTs $var(body) to pns over the http_client connection "pns", which Kamailio keeps open
// between requests. $var(ctype) is the Content-Type value followed by the signed headers, joined
// by CRLF: the KEMI function takes it at run time, which the native http_connect() cannot.
// Sets $var(status) (HTTP status, or curl's error code) and $var(result) (the answer's body).
function pns_post() {
	var status = KSR.http_client.curl_connect_post("pns", "", KSR.pv.get("$var(ctype)"),
		KSR.pv.get("$var(body)"), "$var(result)");
	KSR.pv.seti("$var(status)", status);
}
