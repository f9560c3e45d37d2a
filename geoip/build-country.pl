#!/usr/bin/perl
# build-country.pl [--tor-dir DIR] [--iso-json FILE] OUTPUT
#
# Builds lproc's built-in country database, a MaxMind DB (.mmdb) file, from Debian's
# tor-geoipdb (DIR/geoip: "INTIPLOW,INTIPHIGH,CC" lines; DIR/geoip6: "IPV6LOW,IPV6HIGH,CC")
# and the country names of Debian's iso-codes (iso_3166-1.json).
#
# The database: database_type "lproc-country", ip_version 6, record_size 24, IPv4 stored
# under ::/96 and aliased from ::ffff:0:0/96 (IPv4-mapped), 2001::/32 (Teredo) and
# 2002::/16 (6to4), so plain IPv4 lookups work. Each record is
#   { country => { iso_code => "US", names => { en => "United States" } } }
# Ranges are inserted with the writer's insert_range, which splits them into CIDR blocks.
#
# Codes and names:
#   - a code of ISO 3166-1 (iso-codes) is kept; its English name is the iso-codes
#     "common_name" when there is one (e.g. "South Korea", "Taiwan", "Vietnam", "Iran",
#     "Bolivia"), else "name" (e.g. "United States", "Russian Federation", "Czechia").
#   - UK (the exceptionally reserved alias of GB) becomes GB, "United Kingdom".
#   - EU (exceptionally reserved by ISO 3166-1; IPFire uses it for networks registered
#     to the European Union region as a whole) is kept as "European Union".
#   - everything else is skipped and looks up as unknown: "??" (unknown), AP (Asia/Pacific),
#     withdrawn codes (AN, CS, SU) and private-use codes (AB, OS, UN, ZZ).
#   - IPv6 ranges inside the aliased networks above are skipped (they hold IPv4 data).
#
# The build epoch is $SOURCE_DATE_EPOCH, else the modification time of the newest input,
# so the same inputs give the same file. The data is the IPFire Location database,
# CC BY-SA 4.0; the database description says so.
use strict;
use warnings;
use Getopt::Long qw(GetOptions);
use JSON::PP ();
use Socket qw(AF_INET6 inet_ntoa inet_pton);

my $ME = 'build-country.pl';
my $tor_dir = '/usr/share/tor';
my $iso_json = '/usr/share/iso-codes/json/iso_3166-1.json';
my $DESCRIPTION = 'IPFire Location database via Debian tor-geoipdb, CC BY-SA 4.0';

sub fail { print STDERR "$ME: @_\n"; exit 1 }

GetOptions('tor-dir=s' => \$tor_dir, 'iso-json=s' => \$iso_json)
    && @ARGV == 1
    or do { print STDERR "usage: $ME [--tor-dir DIR] [--iso-json FILE] OUTPUT\n"; exit 2 };
my $out = $ARGV[0];

my ($geoip4, $geoip6) = ("$tor_dir/geoip", "$tor_dir/geoip6");
for my $f ($geoip4, $geoip6) {
    -r $f or fail("$f: " . ($! || 'not readable') . " (install tor-geoipdb: make deps)");
}
-r $iso_json or fail("$iso_json: " . ($! || 'not readable') . " (install iso-codes: make deps)");
eval { require MaxMind::DB::Writer::Tree; 1 }
    or fail('MaxMind::DB::Writer::Tree is missing (install libmaxmind-db-writer-perl: make deps)');

# Country names by ISO 3166-1 alpha-2 code.
my %name;
{
    open my $fh, '<:raw', $iso_json or fail("$iso_json: $!");
    local $/;
    my $doc = eval { JSON::PP->new->utf8->decode(<$fh>) } or fail("$iso_json: not valid JSON");
    for my $c (@{ $doc->{'3166-1'} || [] }) {
        $name{ $c->{alpha_2} } = $c->{common_name} // $c->{name} if $c->{alpha_2};
    }
    keys %name > 200 or fail("$iso_json: no ISO 3166-1 countries found");
}
my %alias = (UK => 'GB');
$name{EU} = 'European Union';

my %types = (
    country  => 'map',
    names    => 'map',
    iso_code => 'utf8_string',
    en       => 'utf8_string',
);
my $tree = MaxMind::DB::Writer::Tree->new(
    ip_version               => 6,
    record_size              => 24,
    database_type            => 'lproc-country',
    languages                => ['en'],
    description              => { en => $DESCRIPTION },
    map_key_type_callback    => sub { $types{ $_[0] } },
    alias_ipv6_to_ipv4       => 1,
    remove_reserved_networks => 0,
);

my $epoch = $ENV{SOURCE_DATE_EPOCH};
if (!defined $epoch || $epoch !~ /^\d+$/) {
    $epoch = 0;
    for my $f ($geoip4, $geoip6, $iso_json) {
        my $m = (stat $f)[9] // 0;
        $epoch = $m if $m > $epoch;
    }
}
$tree->_set_build_epoch($epoch) if $tree->can('_set_build_epoch');

# The record of a country code, one shared hash per country; undef when skipped.
my (%record, %skipped);
sub record_for {
    my $cc = $alias{ $_[0] } // $_[0];
    return $record{$cc} //= { country => { iso_code => $cc, names => { en => $name{$cc} } } }
        if defined $name{$cc};
    $skipped{ $_[0] }++;
    return undef;
}

# Inserts the range first..last with record $rec. The public insert_range serializes and
# hashes the record on every call to find its key, which is a third of the build time;
# with the 0.300 series of the writer (whose internal _insert_range takes that key), the
# key is computed once per country instead.
my %key_of;
my $fast = $tree->can('_insert_range') && MaxMind::DB::Writer::Tree->VERSION =~ /^0\.300\d*$/
    && eval { require MaxMind::DB::Writer::Util; MaxMind::DB::Writer::Util->can('key_for_data') };
sub insert {
    my ($first, $last, $rec) = @_;
    return $tree->insert_range($first, $last, $rec) unless $fast;
    my $key = $key_of{$rec} //= MaxMind::DB::Writer::Util::key_for_data($rec);
    $tree->_insert_range($first, $last, $key, $rec, q{});
}

# IPv6 networks aliased to IPv4: [first, last] as 16-byte strings.
my @aliased = map { [ inet_pton(AF_INET6, $_->[0]), inet_pton(AF_INET6, $_->[1]) ] } (
    [ '::ffff:0:0', '::ffff:ffff:ffff' ],
    [ '2001::', '2001:0:ffff:ffff:ffff:ffff:ffff:ffff' ],
    [ '2002::', '2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff' ],
);

my ($ranges, $aliased) = (0, 0);

open my $fh4, '<', $geoip4 or fail("$geoip4: $!");
while (my $line = <$fh4>) {
    next if $line =~ /^\s*(?:#|$)/;
    my ($lo, $hi, $cc) = $line =~ /^(\d+),(\d+),(\S+)\s*$/
        or fail("$geoip4:$.: malformed line");
    $lo <= $hi && $hi <= 0xffffffff or fail("$geoip4:$.: bad range");
    my $rec = record_for($cc) or next;
    insert(inet_ntoa(pack 'N', $lo), inet_ntoa(pack 'N', $hi), $rec);
    $ranges++;
}
close $fh4;

open my $fh6, '<', $geoip6 or fail("$geoip6: $!");
RANGE: while (my $line = <$fh6>) {
    next if $line =~ /^\s*(?:#|$)/;
    my ($lo, $hi, $cc) = $line =~ /^([0-9A-Fa-f:.]+),([0-9A-Fa-f:.]+),(\S+)\s*$/
        or fail("$geoip6:$.: malformed line");
    my ($blo, $bhi) = (inet_pton(AF_INET6, $lo), inet_pton(AF_INET6, $hi));
    defined $blo && defined $bhi && $blo le $bhi or fail("$geoip6:$.: bad range");
    for my $a (@aliased) {
        if ($blo le $a->[1] && $bhi ge $a->[0]) {
            $aliased++;
            next RANGE;
        }
    }
    my $rec = record_for($cc) or next;
    insert($lo, $hi, $rec);
    $ranges++;
}
close $fh6;

open my $ofh, '>:raw', "$out.tmp" or fail("$out.tmp: $!");
$tree->write_tree($ofh);
close $ofh or fail("$out.tmp: $!");
rename "$out.tmp", $out or fail("$out: $!");

my $skipped = join ', ', map { "$_ $skipped{$_}" } sort keys %skipped;
printf STDERR "%s: %s: %d ranges, %d countries; skipped %d in IPv4-aliased networks, %s\n",
    $ME, $out, $ranges, scalar(keys %record), $aliased, $skipped || 'nothing else';
